"""Conversations and their messages: the live chat over a WebSocket, streaming replies, the
pages and the REST API for them, exports, titles. Builds on billing, providers, accounts, core."""
