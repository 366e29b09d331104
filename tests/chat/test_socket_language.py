"""The chat socket speaks the person's language: their choice, else the handshake's
Accept-Language (accounts.middleware.UserLanguageSocketMiddleware). Error codes never change."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tests.chat.test_socket import create
from tests.conftest import ORIGIN, session_cookie


async def _socket_error(communicator: WebsocketCommunicator) -> dict:
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "message", "content": "hello"})
    while True:
        event = await communicator.receive_json_from(30)
        if event["type"] == "error":
            await communicator.disconnect()
            return event


@pytest.mark.django_db(transaction=True)
async def test_the_socket_tells_a_korean_user_in_korean(
    open_socket, make_conversation, alice, project_a
):
    alice.language = "ko"
    await database_sync_to_async(alice.save)()
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@429")
    _, socket = await open_socket(alice, conversation.pk)

    await socket.send(type="message", content="hello")
    error = (await socket.until("error"))[-1]

    assert error["code"] == "rate_limit_exceeded"  # codes are never translated
    assert error["message"].startswith("모델 제공업체가 지금 요청 속도를 제한하고 있습니다.")
    assert "1초 뒤에 다시 시도하세요." in error["message"]


@pytest.mark.django_db(transaction=True)
async def test_the_socket_follows_the_handshakes_accept_language(
    make_conversation, alice, project_a
):
    conversation = await create(make_conversation, alice, project_a, model="fake-gpt@500")
    from config.asgi import application

    cookie = await database_sync_to_async(session_cookie)(alice)
    headers = [(b"origin", ORIGIN.encode()), (b"cookie", cookie.encode())]

    korean = await _socket_error(
        WebsocketCommunicator(
            application,
            f"/ws/conversations/{conversation.pk}/",
            headers=[*headers, (b"accept-language", b"ko-KR,ko;q=0.9")],
        )
    )
    english = await _socket_error(
        WebsocketCommunicator(
            application,
            f"/ws/conversations/{conversation.pk}/",
            headers=[*headers, (b"accept-language", b"en-GB")],
        )
    )

    assert korean["code"] == english["code"] == "upstream_error"
    assert korean["message"].startswith("모델 제공업체에 오류가 났거나")
    assert english["message"].startswith("The model provider failed or is unavailable")
