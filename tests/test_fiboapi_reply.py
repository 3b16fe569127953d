"""The reply to the customer (fiboreply.py): pushes through the real app (WebTest, lint on)
with replies in the settings file, FiboSMS's API the emulator on 127.0.0.1: the keyword, at
most one reply per message whatever runs its hook again, the per-day limit, the options, the
API's codes as states and log lines, unknown outcomes, retries of what never left, settings."""
import json
import os
import sqlite3
import time
import uuid

import pytest

import fiboreply
import support
from support import Application
from conftest import rows
from test_fiboapi import assert_no_secret, configure, emulator, run  # noqa: F401 (fixture)

PHONE = '+84912345678'
RULES = json.dumps({'*': 'Cảm ơn bạn đã nhắn tin', 'ĐK': 'Bạn đã đăng ký', 'huy': ''},
                   ensure_ascii=False)
REGISTERED, THANKS = 'Bạn đã đăng ký', 'Cảm ơn bạn đã nhắn tin'


def replying(db, emu, *more, **kwargs):
    """Settings with replies by RULES (or rules=) through `emu`, and `more`."""
    configure(db, emu, 'FIBOSMS_REPLY=' + kwargs.get('rules', RULES), *more)


def push(client, message='DK', phone=PHONE, guid='g-1'):
    """One push through the app: its answer's body."""
    return client.get('/' + support.TOKEN, {'guid': guid, 'phone': phone, 'message': message},
                      status='*', expect_errors=True).body


def replies(db):
    """The rows of fiboapi_replies, as dicts ([] when it was never made)."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute('SELECT * FROM fiboapi_replies ORDER BY rowid')]
    except sqlite3.OperationalError as exc:
        assert 'no such table' in str(exc)
        return []
    finally:
        conn.close()


def log(db):
    path = os.path.join(os.path.dirname(db), 'receiver.log')
    if not os.path.exists(path):
        return ''
    with open(path, encoding='utf-8') as f:
        return f.read()


@pytest.fixture
def app():
    application = Application()
    yield application
    application.stop()


@pytest.mark.parametrize('message, reply', [
    ('DK abc', REGISTERED), ('đk', REGISTERED), ('Dk,VIP', REGISTERED),
    ('  #ĐK!', REGISTERED), ('\u202eDK', REGISTERED), ('ＤＫ 1', REGISTERED),
    ('DKX', THANKS), ('Đăng ký', THANKS), ('', THANKS), ('HUỶ', None), ('Huy bo', None),
])
def test_the_keyword_is_the_first_word_without_case_or_accents(make_client, db, emulator,
                                                               message, reply):
    """The first run of letters and digits, case and accents aside, picks the rule; "*"
    answers the others; a rule of "" sends nothing. The push is answered 2."""
    replying(db, emulator)
    assert push(make_client(), message) == support.DONE
    assert [m['message'] for m in emulator.outbox] == ([reply] if reply else [])
    [row] = replies(db)
    assert row['state'] == ('sent' if reply else 'skipped')
    assert rows(db)[0]['state'] == 'processed'


def test_without_a_default_other_messages_get_no_reply(make_client, db, emulator):
    replying(db, emulator, rules='{"DK": "Bạn đã đăng ký"}')
    assert push(make_client(), 'xin chào') == support.DONE
    assert emulator.outbox == []
    assert [(r['state'], r['reason']) for r in replies(db)] == [('skipped', 'no rule for it')]


def test_the_reply_goes_to_the_phone_with_an_sms_guid_of_the_message(make_client, db,
                                                                     emulator):
    """SendSMS to the number as written in Vietnam, the serviceType set, smsGUID the uuid5 of
    the guid: the same whoever sends it."""
    replying(db, emulator)
    push(make_client(), 'DK')
    assert emulator.outbox[0]['phone'] == '0912345678'
    assert emulator.outbox[0]['service_type'] == '1'
    assert emulator.outbox[0]['sms_guid'] == str(uuid.uuid5(fiboreply.NAMESPACE, 'g-1'))
    assert emulator.outbox[0]['function'] == 'SendSMS'


def test_at_most_one_reply_per_message_whatever_runs_its_hook_again(make_client, db,
                                                                    emulator, app):
    """The forward failing: the gateway's five tries, then retry, run the hook again; the
    reply went once, the forward is tried each time."""
    replying(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    app.status = 500
    client = make_client()
    assert [push(client) for _ in range(5)] == [support.RETRY] * 5
    assert run(db, 'retry')[0] == 1
    app.status = 204
    assert run(db, 'retry')[0] == 0
    assert len(emulator.outbox) == 1 and len(app.requests) == 7
    assert [(r['state'], r['attempts']) for r in replies(db)] == [('sent', 1)]
    assert rows(db)[0]['state'] == 'processed'


def test_a_refused_reply_never_fails_the_forward(make_client, db, emulator, app):
    """Balance zero: the reply is 'refused' (102) with one log line, the forward runs and the
    push is answered 2; check names the balance until a reply is sent again."""
    replying(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    emulator.balance = 0
    assert push(make_client()) == support.DONE
    assert len(app.requests) == 1 and emulator.outbox == []
    assert [(r['state'], r['code']) for r in replies(db)] == [('refused', 102)]
    lines = log(db).splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "reply to guid 'g-1': refused by FiboSMS: balance zero (102)")
    code, out, _ = run(db, 'check', '--quiet')
    assert code == 1 and out.startswith('reply_account: FiboSMS refuses the replies since ')
    assert "balance zero (102); top up the account's balance" in out
    emulator.balance = 5
    assert push(make_client(), guid='g-2') == support.DONE
    assert run(db, 'check', '--quiet')[:2] == (0, '')


@pytest.mark.parametrize('code', [100, 101, 102, 103, 104, 202])
def test_each_code_of_the_api_is_a_state_and_one_log_line(make_client, db, emulator, code):
    """Each refusal: state 'refused' with its code, one log line naming the guid and the code,
    never the phone, the text or the password; never tried again."""
    replying(db, emulator)
    emulator.fault(code, 'SendSMS')
    assert push(make_client(), 'DK tôi') == support.DONE
    assert [(r['state'], r['code']) for r in replies(db)] == [('refused', code)]
    [line] = log(db).splitlines()
    assert "reply to guid 'g-1': refused by FiboSMS: " in line and str(code) in line
    assert '912345678' not in line and 'tôi' not in line and REGISTERED not in line
    assert_no_secret(line)
    assert run(db, 'retry')[0] == 0
    assert [c[0] for c in emulator.calls] == ['SendSMS']


def test_an_outcome_not_known_is_never_sent_again(make_client, db, emulator):
    """The request left and no answer came back: 'unknown', never sent again (not by the
    gateway's retry, not by retry), named by check for a week."""
    replying(db, emulator)
    emulator.fault('close', 'SendSMS')
    client = make_client()
    assert push(client) == support.DONE
    push(client)
    assert run(db, 'retry')[0] == 0
    assert len(emulator.outbox) == 1 and len(emulator.calls) == 1
    assert [r['state'] for r in replies(db)] == ['unknown']
    code, out, _ = run(db, 'check', '--quiet')
    assert code == 1 and out.startswith('reply_unknown: 1 replies of the last 7 days may or'
                                        ' may not have gone (guid g-1)')


def test_a_process_that_died_while_sending_leaves_an_unknown_reply(make_client, db,
                                                                   emulator):
    """A row left 'sending' (its process ended before the answer, here as if so): check
    names it, retry marks it 'unknown' and sends nothing."""
    replying(db, emulator)
    push(make_client())
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE fiboapi_replies SET state = 'sending', tried_at = ?",
                     (time.time() - fiboreply.STALE - 1,))
    conn.close()
    assert 'reply_unknown: 1 replies' in run(db, 'check')[1]
    assert run(db, 'retry')[0] == 0
    assert [r['state'] for r in replies(db)] == ['unknown'] and len(emulator.outbox) == 1


def test_a_request_that_never_left_is_sent_by_retry(make_client, db, emulator):
    """No connection to the API: 'pending' and one log line; retry sends it once the API is
    there, and nothing more after."""
    replying(db, emulator, 'FIBOSMS_API_URL=http://127.0.0.1:%d/Service.asmx'
             % support.free_port())
    assert push(make_client()) == support.DONE
    assert [(r['state'], r['attempts']) for r in replies(db)] == [('pending', 1)]
    assert 'no connection (ConnectionRefusedError); tried again by storage.py' in log(db)
    replying(db, emulator)
    code, out, _ = run(db, 'retry')
    assert (code, out) == (0, 'g-1 reply sent\n')
    assert run(db, 'retry')[:2] == (0, '')
    assert [(r['state'], r['attempts']) for r in replies(db)] == [('sent', 2)]
    assert len(emulator.outbox) == 1


def test_a_request_that_never_leaves_is_given_up_after_its_tries(make_client, db, emulator):
    replying(db, emulator, 'FIBOSMS_API_URL=http://127.0.0.1:%d/Service.asmx'
             % support.free_port())
    push(make_client())
    assert run(db, 'retry')[:2] == (1, 'g-1 reply pending\n')
    assert run(db, 'retry')[:2] == (0, 'g-1 reply unsent\n')
    assert run(db, 'retry')[:2] == (0, '')
    assert [(r['state'], r['attempts']) for r in replies(db)] == [('unsent',
                                                                   fiboreply.TRIES)]


def test_at_most_n_replies_to_one_phone_a_day(make_client, db, emulator):
    """FIBOSMS_REPLY_PER_DAY: the next message of that phone in 24 hours gets none."""
    replying(db, emulator, 'FIBOSMS_REPLY_PER_DAY=2')
    client = make_client()
    for n in range(3):
        push(client, 'DK', guid='g-%d' % n)
    push(client, 'DK', phone='0987654321', guid='g-other')
    assert [m['phone'] for m in emulator.outbox] == ['0912345678'] * 2 + ['0987654321']
    assert [(r['state'], r['reason']) for r in replies(db)][2] == (
        'skipped', '2 replies to this phone in 24 hours already')


def test_at_most_n_replies_to_all_phones_a_day(make_client, db, emulator):
    """FIBOSMS_REPLY_A_DAY: past it, no phone gets a reply for 24 hours: what a flood of
    messages from many numbers can cost."""
    replying(db, emulator, 'FIBOSMS_REPLY_A_DAY=3')
    client = make_client()
    for n in range(5):
        push(client, 'DK', phone='09123456%02d' % n, guid='g-%d' % n)
    assert len(emulator.outbox) == 3
    assert [(r['state'], r['reason']) for r in replies(db)][3:] == [
        ('skipped', '3 replies in 24 hours already (FIBOSMS_REPLY_A_DAY)')] * 2


def test_the_default_limit_is_small(make_client, db, emulator):
    replying(db, emulator)
    client = make_client()
    for n in range(5):
        push(client, guid='g-%d' % n)
    assert len(emulator.outbox) == fiboreply.DEFAULT_PER_DAY == 3


def test_replies_without_diacritics(make_client, db, emulator):
    """FIBOSMS_REPLY_ASCII=yes: no diacritics, đ as d."""
    replying(db, emulator, 'FIBOSMS_REPLY_ASCII=yes')
    push(make_client(), 'đk')
    assert [m['message'] for m in emulator.outbox] == ['Ban da dang ky']


def test_a_brand_name_sends_masked(make_client, db, emulator):
    replying(db, emulator, 'FIBOSMS_REPLY_BRAND=FIBOSHOP')
    push(make_client())
    assert [(m['function'], m['sender_name']) for m in emulator.outbox] == [
        ('SendMaskedSMS', 'FIBOSHOP')]


@pytest.mark.parametrize('phone', ['8022', 'VIETTEL', '+1 415 555 0100', '0912'])
def test_a_number_that_is_not_a_mobile_gets_no_reply(make_client, db, emulator, phone):
    replying(db, emulator)
    assert push(make_client(), phone=phone) == support.DONE
    assert emulator.outbox == []
    assert [(r['state'], r['reason'], r['phone']) for r in replies(db)] == [
        ('skipped', 'not a mobile number', None)]


def test_a_hostile_message_gets_the_rules_text_and_nothing_of_its_own(make_client, db,
                                                                      emulator):
    """A long message of control and bidirectional characters and markup: its keyword is
    read from its start, and nothing of it goes into the request."""
    replying(db, emulator)
    message = 'dK\x1b[2J\u202e<script>' + '%s' * 10 + 'x' * 15000
    assert push(make_client(), message) == support.DONE
    assert [m['message'] for m in emulator.outbox] == [REGISTERED]
    sent = json.dumps(emulator.calls)
    assert 'script' not in sent and 'x' * 20 not in sent


def test_the_reply_and_a_handler_combine(make_client, db, emulator, hook_module):
    """FIBOSMS_HANDLER with replies: the reply, then the handler; the handler failing is run
    again by the gateway's retry, the reply is not sent again."""
    name = hook_module('calls = []\n'
                       'def handle(message):\n'
                       '    calls.append(message["guid"])\n'
                       '    if len(calls) < 3:\n'
                       '        raise RuntimeError("not yet")\n')
    replying(db, emulator, 'FIBOSMS_HANDLER=%s:handle' % name)
    client = make_client()
    assert [push(client) for _ in range(3)] == [support.RETRY] * 2 + [support.DONE]
    assert len(emulator.outbox) == 1
    assert __import__(name).calls == ['g-1'] * 3


@pytest.mark.parametrize('line, says', [
    ('FIBOSMS_REPLY=Cảm ơn', 'FIBOSMS_REPLY is not a JSON object'),
    ('FIBOSMS_REPLY=["DK"]', 'FIBOSMS_REPLY is not a JSON object'),
    ('FIBOSMS_REPLY={"DK": "a", "đk": "b"}', "two replies to 'dk'"),
    ('FIBOSMS_REPLY={"DK": "a", "DK": "b"}', "two replies to 'dk'"),
    ('FIBOSMS_REPLY={"DK HUY": "a"}', 'is not "*" nor one word'),
    ('FIBOSMS_REPLY={"*": "%s"}' % ('x' * 460), 'over 459 characters'),
    ('FIBOSMS_REPLY={"*": "a\\u0007b"}', 'control characters'),
    ('FIBOSMS_REPLY_PER_DAY=0', 'FIBOSMS_REPLY_PER_DAY must be a number from 1 to 100'),
    ('FIBOSMS_REPLY_A_DAY=0', 'FIBOSMS_REPLY_A_DAY must be a number of replies'),
    ('FIBOSMS_REPLY_A_DAY=lots', 'FIBOSMS_REPLY_A_DAY must be a number of replies'),
    ('FIBOSMS_REPLY_ASCII=maybe', 'FIBOSMS_REPLY_ASCII must be yes or no'),
    ('FIBOSMS_REPLY_BRAND=A brand far too long', 'FIBOSMS_REPLY_BRAND must be'),
    ('FIBOSMS_API_SERVICE_TYPE=', 'FIBOSMS_API_SERVICE_TYPE must be the number'),
    ('FIBOSMS_API_CLIENT_PASS=', 'FIBOSMS_API_CLIENT_NO and FIBOSMS_API_CLIENT_PASS'),
])
def test_a_reply_setting_that_cannot_work(make_client, db, emulator, line, says):
    """The message is stored, failed with the reason, answered 1, nothing sent; check names
    the setting."""
    replying(db, emulator, line)
    assert push(make_client()) == support.RETRY
    [row] = rows(db)
    assert row['state'] == 'failed' and says in row['last_error']
    assert emulator.calls == []
    code, out, _ = run(db, 'check')
    assert code == 1 and says in out


def test_the_password_is_in_no_log_row_or_output(make_client, db, emulator):
    """After replies refused, unknown and not sent, no log, row or command's output holds the
    API password (it travels in the query string only)."""
    replying(db, emulator)
    client = make_client()
    emulator.fault(100, 'SendSMS')
    push(client, guid='g-1')
    emulator.fault('close', 'SendSMS')
    push(client, guid='g-2')
    outputs = [run(db, command)[1:] for command in ('check', 'retry', 'list', 'stats')]
    assert_no_secret(log(db), json.dumps(rows(db)), json.dumps(replies(db)),
                     json.dumps(outputs))
    assert [c[2] for c in emulator.calls] == [True, True]     # sent, all the same


@pytest.fixture
def hook_module(tmp_path, monkeypatch):
    """hook_module(source) -> the name of a new module, importable (as test_hook's)."""
    import sys
    folder = tmp_path / 'hooks'
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    names = []

    def write(source):
        name = 'fibosms_hook_%s' % uuid.uuid4().hex
        (folder / (name + '.py')).write_text(source, encoding='utf-8')
        names.append(name)
        return name
    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_a_message_sent_over_a_day_ago_gets_no_reply(make_client, db, emulator, app):
    """Replies newly set, retry runs the hook over a message that failed two days ago: no
    reply (it would come too late to help)."""
    configure(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    app.status = 500
    assert push(make_client()) == support.RETRY
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE messages SET received_at = '2000-01-01T00:00:00.000Z'")
    conn.close()
    replying(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url)
    app.status = 204
    assert run(db, 'retry')[0] == 0
    assert emulator.outbox == []
    assert [(r['state'], r['reason']) for r in replies(db)] == [
        ('skipped', 'sent more than a day ago')]


def test_a_lost_sms_sent_over_a_day_ago_is_stored_but_not_replied_to(db, emulator):
    """Catch-up stores an SMS of two days ago; its reply is measured from its createddate."""
    replying(db, emulator)
    emulator.receive('0912345678', 'DK', status=5, created=time.time() - 2 * 86400)
    emulator.receive('0987654321', 'DK', status=5)
    assert run(db, 'catchup', '--minutes', '4320')[0] == 0
    assert len(rows(db)) == 2
    assert [m['phone'] for m in emulator.outbox] == ['0987654321']
    assert [r['reason'] for r in replies(db)] == ['sent more than a day ago', None]


def test_a_hook_setting_that_cannot_work_sends_no_reply(make_client, db, emulator, app):
    """FIBOSMS_FORWARD_URL and FIBOSMS_HANDLER both set: the forward's own check fails before
    the reply is decided, so nothing is sent and nothing recorded until it is mended."""
    replying(db, emulator, 'FIBOSMS_FORWARD_URL=' + app.url, 'FIBOSMS_HANDLER=x:y')
    assert push(make_client()) == support.RETRY
    assert emulator.calls == [] and app.requests == []
    assert 'FIBOSMS_FORWARD_URL and FIBOSMS_HANDLER are both set' in rows(db)[0]['last_error']
    assert replies(db) == []
