"""Tools a model may call in the chat: safe built-in ones and those of a project's MCP servers.

``base`` has the types; ``registry`` is what services use (the options a project offers, the
check of a conversation's or persona's choice, and the ``Toolset`` a reply calls through).
"""
