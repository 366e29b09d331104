"""Korean and English: the browser's language (Accept-Language), a person's own choice that
wins over it, the socket in that language, localized dates, and catalogues with every message
translated. The ``/v1`` surface stays in English: its clients are programs reading OpenAI's
words."""

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from channels.testing import HttpCommunicator
from django.conf import settings
from django.core import mail
from django.urls import reverse
from django.utils import translation

from accounts.models import User
from accounts.templatetags.ui import durationminutes

LOCALE = Path(settings.BASE_DIR) / "locale"


@pytest.fixture(autouse=True)
def _back_to_the_default_language():
    """The test client runs requests in the test's own context, so the language a request
    activated would outlive the test: later tests calling services directly expect English."""
    yield
    translation.deactivate()


def html_lang(body: str) -> str:
    match = re.search(r'<html lang="([^"]+)"', body)
    assert match, "no <html lang> on the page"
    return match.group(1)


def heading(body: str) -> str:
    match = re.search(r"<h1[^>]*>(.*?)</h1>", body, re.S)
    assert match
    return match.group(1).strip()


# --- the browser's language ---------------------------------------------------------------------


@pytest.mark.django_db
def test_it_speaks_korean_to_a_korean_browser(client):
    response = client.get(reverse("login"), HTTP_ACCEPT_LANGUAGE="ko-KR,ko;q=0.9,en;q=0.8")

    body = response.content.decode()
    assert html_lang(body) == "ko"
    assert response["Content-Language"] == "ko"
    assert heading(body) == "로그인"
    assert "비밀번호를 잊으셨나요?" in body
    assert 'for="id_username">이메일</label>' in body


@pytest.mark.django_db
def test_it_speaks_english_to_everyone_else(client):
    response = client.get(reverse("login"), HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9")

    body = response.content.decode()
    assert html_lang(body) == "en"
    assert heading(body) == "Log in"
    assert "로그인" not in body


@pytest.mark.django_db
def test_a_visitor_picks_a_language_with_set_language(client):
    response = client.post(reverse("set_language"), {"language": "ko", "next": "/login/"})

    assert response.status_code == 302
    assert response["Location"] == "/login/"
    # The cookie wins over the browser's own preference from now on.
    page = client.get("/login/", HTTP_ACCEPT_LANGUAGE="en")
    assert heading(page.content.decode()) == "로그인"


@pytest.mark.django_db
def test_the_login_page_offers_the_languages(client):
    body = client.get(reverse("login")).content.decode()

    assert f'action="{reverse("set_language")}"' in body
    assert '<option value="ko" lang="ko">한국어</option>' in body
    assert '<option value="en" lang="en" selected>English</option>' in body


# --- a person's own choice -------------------------------------------------------------------


def test_a_persons_choice_wins_over_the_browser(alice, client_for):
    alice.language = "ko"
    alice.save()

    response = client_for(alice).get(reverse("home"), HTTP_ACCEPT_LANGUAGE="en-US,en")

    body = response.content.decode()
    assert html_lang(body) == "ko"
    assert heading(body) == "내 조직"


def test_english_chosen_under_a_korean_browser_is_english(alice, client_for):
    alice.language = "en"
    alice.save()

    response = client_for(alice).get(reverse("home"), HTTP_ACCEPT_LANGUAGE="ko")

    assert heading(response.content.decode()) == "Your organizations"


def test_it_follows_the_browser_until_a_choice_is_made(alice, client_for):
    assert alice.language == ""

    response = client_for(alice).get(reverse("home"), HTTP_ACCEPT_LANGUAGE="ko")

    assert heading(response.content.decode()) == "내 조직"


def test_the_account_page_saves_the_choice(alice, client_for):
    client = client_for(alice)

    response = client.post(reverse("account"), {"language": "ko"}, HTTP_ACCEPT_LANGUAGE="en")

    alice.refresh_from_db()
    assert alice.language == "ko"
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "ko"
    page = client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "언어를 저장했습니다." in page  # the message, in the language just chosen
    assert '<option value="ko" selected>한국어</option>' in page


def test_going_back_to_the_browsers_language(alice, client_for):
    alice.language = "ko"
    alice.save()
    client = client_for(alice)

    response = client.post(reverse("account"), {"language": ""}, HTTP_ACCEPT_LANGUAGE="en")

    alice.refresh_from_db()
    assert alice.language == ""
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == ""  # deleted
    page = client.get(reverse("home"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert heading(page) == "Your organizations"
    assert "Your language is saved." in page


def test_the_account_page_refuses_a_language_we_do_not_speak(alice, client_for):
    response = client_for(alice).post(reverse("account"), {"language": "fr"})

    assert response.status_code == 200
    assert "Select a valid choice. fr is not one of the available choices." in (
        response.content.decode()
    )
    alice.refresh_from_db()
    assert alice.language == ""


def test_set_language_saves_a_signed_in_persons_choice(alice, client_for):
    client = client_for(alice)

    client.post(reverse("set_language"), {"language": "ko", "next": "/"})

    alice.refresh_from_db()
    assert alice.language == "ko"


def test_the_account_page_is_for_people_signed_in(client):
    response = client.get(reverse("account"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


# --- messages, errors, e-mails -----------------------------------------------------------------


def test_a_refusal_from_a_service_is_in_the_persons_language(alice, org_a, client_for):
    alice.language = "ko"
    alice.save()
    own = alice.memberships.get(organization=org_a)
    url = reverse("member_change_role", args=[org_a.slug, own.pk])

    # The only owner cannot step down: the service refuses, the page says why, in Korean.
    page = client_for(alice).post(url, {"role": "member"}, follow=True).content.decode()

    assert "조직에는 소유자가 한 명 이상 있어야 합니다." in page


def test_a_success_message_is_in_the_persons_language(alice, org_a, client_for):
    alice.language = "ko"
    alice.save()
    url = reverse("organization_rename", args=[org_a.slug])

    page = client_for(alice).post(url, {"name": "Acme"}, follow=True).content.decode()

    assert "조직 이름을 바꿨습니다." in page


def test_form_errors_are_in_the_browsers_language(client):
    response = client.post(
        reverse("signup"), {"email": "", "password": ""}, HTTP_ACCEPT_LANGUAGE="ko"
    )

    body = response.content.decode()
    assert "필수 항목입니다." in body  # Django's own catalogue: "This field is required."
    assert "계정 만들기" in body


def test_an_invitation_mail_is_in_the_invitees_language(
    alice, org_a, client_for, django_capture_on_commit_callbacks
):
    User.objects.create_user(email="minji@example.com", password="x" * 12, language="ko")
    url = reverse("member_invite", args=[org_a.slug])

    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(
            url, {"email": "minji@example.com", "role": "member"}, HTTP_ACCEPT_LANGUAGE="en"
        )

    (message,) = mail.outbox
    assert message.subject == "Alice 님이 Org A에 초대했습니다"
    assert "Alice 님이 Org A에 멤버(으)로 초대했습니다." in message.body
    assert "초대 수락하기: http" in message.body


def test_an_invitation_to_a_new_address_is_in_the_inviters_language(
    alice, org_a, client_for, django_capture_on_commit_callbacks
):
    url = reverse("member_invite", args=[org_a.slug])

    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(
            url, {"email": "new@example.com", "role": "admin"}, HTTP_ACCEPT_LANGUAGE="ko"
        )

    (message,) = mail.outbox
    assert "관리자(으)로 초대했습니다" in message.body


@pytest.mark.django_db
def test_the_confirmation_mail_speaks_the_language_of_the_sign_up(
    client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            reverse("signup"),
            {"email": "jiho@example.com", "password": "a long enough passphrase"},
            HTTP_ACCEPT_LANGUAGE="ko",
        )

    (message,) = mail.outbox
    assert message.subject == "이메일 주소를 확인하세요"
    assert "링크는 3일 동안 유효합니다." in message.body


@pytest.mark.django_db
def test_the_password_reset_mail_is_translated(client):
    User.objects.create_user(email="jiho@example.com", password="x" * 12)

    client.post(reverse("password_reset"), {"email": "jiho@example.com"}, HTTP_ACCEPT_LANGUAGE="ko")

    (message,) = mail.outbox
    assert message.subject == "LLM Gateway 비밀번호 재설정"
    assert (
        "누군가 LLM Gateway 계정 jiho@example.com의 비밀번호 재설정을 요청했습니다." in message.body
    )


def test_a_budget_alert_reaches_each_manager_in_their_language(alice, org_a):
    from billing.models import Budget
    from billing.tasks import send_budget_alert
    from tests.factories import MembershipFactory

    minji = User.objects.create_user(email="minji@example.com", password="x" * 12, language="ko")
    MembershipFactory(user=minji, organization=org_a, role="admin")
    budget = Budget.objects.create(organization=org_a, scope="organization", limit_usd="10")

    send_budget_alert(budget.pk, 80)

    by_address = {tuple(message.to): message for message in mail.outbox}
    assert set(by_address) == {("alice@example.com",), ("minji@example.com",)}
    english, korean = by_address[("alice@example.com",)], by_address[("minji@example.com",)]
    assert english.subject == "[Org A] the Org A budget passed 80% of its limit"
    assert korean.subject == "[Org A] Org A 예산이(가) 한도의 80%를 넘었습니다"
    assert korean.body.startswith(
        "Org A 예산(매월, UTC 기준 $10.00)이(가) 한도의 80%를 넘었습니다."
    )


def test_the_rest_api_answers_in_the_callers_language_with_the_same_codes(client):
    response = client.get(
        "/api/v1/projects/", HTTP_AUTHORIZATION="Bearer lgw_nope", HTTP_ACCEPT_LANGUAGE="ko"
    )

    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (401, "invalid_api_key")
    assert error["message"].startswith("잘못된 API 키입니다.")


async def test_v1_stays_english_whatever_the_browser_says():
    from config.asgi import application

    communicator = HttpCommunicator(
        application,
        "POST",
        "/v1/chat/completions",
        body=b'{"model": "x", "messages": []}',
        headers=[
            (b"authorization", b"Bearer lgw_nope"),
            (b"accept-language", b"ko"),
            (b"content-type", b"application/json"),
        ],
    )
    response = await communicator.get_response()

    error = json.loads(response["body"])["error"]
    assert (response["status"], error["code"]) == (401, "invalid_api_key")
    assert error["message"].startswith("Incorrect API key provided.")


# --- dates and numbers ---------------------------------------------------------------------


def test_dates_are_written_the_languages_way(alice, client_for):
    alice.date_joined = datetime(2026, 3, 5, 9, 30, tzinfo=UTC)
    alice.save()
    client = client_for(alice)

    english = client.get(reverse("account"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    korean = client.get(reverse("account"), HTTP_ACCEPT_LANGUAGE="ko").content.decode()

    assert "<dd>March 5, 2026</dd>" in english
    assert "<dd>2026년 3월 5일</dd>" in korean


def test_a_lockout_duration_is_said_in_the_language():
    with translation.override("ko"):
        assert durationminutes(timedelta(minutes=15)) == "15분"
        assert durationminutes(timedelta(hours=2)) == "2시간"
    with translation.override("en"):
        assert durationminutes(timedelta(minutes=1)) == "1 minute"
        assert durationminutes(timedelta(hours=2)) == "2 hours"


# --- the catalogues ------------------------------------------------------------------------


def read_po(path: Path) -> list[dict]:
    """The entries of a gettext catalogue: msgctxt, msgid, msgid_plural, msgstr (by index),
    flags. Enough of the format for what ``makemessages`` writes."""
    entries: list[dict] = []
    text = path.read_text(encoding="utf-8")
    # makemessages leaves out the blank line after the header of a new djangojs catalogue.
    text = re.sub(r'(\n"[^\n]*")\n(#[:.,] )', r"\1\n\n\2", text)
    for block in text.strip().split("\n\n"):
        entry: dict = {"flags": set(), "msgstr": {}}
        field = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"] |= {flag.strip() for flag in line[2:].split(",")}
            elif line.startswith("#~"):
                entry["obsolete"] = True
            elif match := re.match(
                r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?) (".*")$', line
            ):
                field = match.group(1)
                value = json.loads(match.group(2))
                if field.startswith("msgstr"):
                    index = int(field[7:-1]) if "[" in field else 0
                    entry["msgstr"][index] = value
                else:
                    entry[field] = value
            elif line.startswith('"') and field:
                value = json.loads(line)
                if field.startswith("msgstr"):
                    index = int(field[7:-1]) if "[" in field else 0
                    entry["msgstr"][index] += value
                else:
                    entry[field] += value
        if "msgid" in entry:
            entries.append(entry)
    return entries


PLACEHOLDER = re.compile(r"%\((\w+)\)[sdr]")


@pytest.mark.parametrize("domain", ["django", "djangojs"])
@pytest.mark.parametrize("language", ["ko", "en"])
def test_every_message_is_translated(language, domain):
    entries = read_po(LOCALE / language / "LC_MESSAGES" / f"{domain}.po")
    messages = [e for e in entries if e["msgid"] and not e.get("obsolete")]

    assert messages
    untranslated = [e["msgid"] for e in messages if not all(e["msgstr"].values())]
    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e["flags"]]
    assert not untranslated, f"translate these in locale/{language}: {untranslated}"
    assert not fuzzy, f"check these fuzzy matches in locale/{language}: {fuzzy}"
    # A translation names the same placeholders as its message (or the page breaks).
    broken = [
        e["msgid"]
        for e in messages
        for text in e["msgstr"].values()
        if set(PLACEHOLDER.findall(text)) != set(PLACEHOLDER.findall(e["msgid"]))
    ]
    assert not broken, f"placeholders differ in locale/{language}: {broken}"


@pytest.mark.django_db
def test_scripts_get_their_words_in_the_pages_language(client):
    korean = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="ko")
    english = client.get(reverse("javascript-catalog"), HTTP_ACCEPT_LANGUAGE="en")

    assert korean["Content-Type"].startswith("text/javascript")
    assert '"Copied": "\\ubcf5\\uc0ac\\ud588\\uc2b5\\ub2c8\\ub2e4"' in korean.content.decode()
    assert "ubcf5" not in english.content.decode()


def test_korean_has_one_plural_form():
    header = read_po(LOCALE / "ko" / "LC_MESSAGES" / "django.po")[0]["msgstr"][0]

    assert "Plural-Forms: nplurals=1; plural=0;" in header
    assert "Language: ko" in header


def test_korean_text_differs_from_english():
    entries = read_po(LOCALE / "ko" / "LC_MESSAGES" / "django.po")
    same = [
        e["msgid"]
        for e in entries
        if e["msgid"]
        and re.search(r"[a-z]{4,} [a-z]{3,}", e["msgid"])
        and e["msgstr"][0] == e["msgid"]
    ]

    assert not same, f"left in English in locale/ko: {same}"


def test_the_role_names_are_translated(alice, org_a, client_for):
    alice.language = "ko"
    alice.save()

    body = client_for(alice).get(reverse("organization_settings", args=[org_a.slug])).content

    assert "나: 소유자" in body.decode()
