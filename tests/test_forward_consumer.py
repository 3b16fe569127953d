"""deploy/consumer.php, served by Debian's php-cli (`php -S 127.0.0.1:PORT`), as the
application the receiver forwards to: it takes the receiver's real pushes, and refuses a
changed body, a wrong secret and a stale timestamp, as the Standard Webhooks spec asks."""
import base64
import http.client
import json
import os
import stat
import time

import pytest

import forward
import oracle
from support import DEPLOY, Application, Consumer
from conftest import DONE, RETRY, rows

SECRET = 'whsec_' + base64.b64encode(bytes(range(40, 72))).decode()
WRONG_SECRET = 'whsec_' + base64.b64encode(bytes(range(41, 73))).decode()
VIETNAMESE = 'Tôi muốn đặt 2 vé ở Đà Nẵng, giá 1+1=2 & ưu đãi 150.000đ 😊'


@pytest.fixture
def consumer(tmp_path):
    """deploy/consumer.php under php -S, with SECRET and a database in tmp_path."""
    server = Consumer(SECRET, str(tmp_path / 'consumer' / 'consumer.sqlite3'),
                      str(tmp_path / 'php.log'))
    yield server
    server.stop()


@pytest.fixture
def captured(make_client):
    """captured(guid) -> (headers, body) of a real forward of the receiver, caught by a
    recording application (and verified by the official package)."""
    def capture(guid='g-1', message=VIETNAMESE):
        app = Application()
        try:
            make_client(forward_url=app.url, forward_secret=SECRET).get(
                '/', {'guid': guid, 'phone': '0912345678', 'message': message})
        finally:
            app.stop()
        [request] = app.requests
        assert oracle.verify(SECRET, [(request.headers, request.body)]) == ['ok']
        return request.headers, request.body
    return capture


def send(consumer, headers, body, method='POST'):
    """(status, text) of a request to the consumer, with `headers` but for those that
    describe the connection and the length, which are set anew."""
    headers = {name: value for name, value in headers.items() if name.lower() not in (
        'host', 'content-length', 'connection', 'accept-encoding')}
    conn = http.client.HTTPConnection('127.0.0.1', consumer.port, timeout=15)
    try:
        conn.request(method, '/consumer.php', body, headers)
        response = conn.getresponse()
        return response.status, response.read().decode('utf-8', 'replace')
    finally:
        conn.close()


def resigned(headers, body, timestamp=None, secret=SECRET, msg_id=None):
    """`headers` with webhook-timestamp and a v1 signature for `body` made anew."""
    headers = dict(headers)
    timestamp = int(time.time()) if timestamp is None else timestamp
    msg_id = msg_id or headers['webhook-id']
    headers.update({'webhook-id': msg_id, 'webhook-timestamp': str(timestamp),
                    'webhook-signature': forward.sign(forward.secret_key(secret), msg_id,
                                                      timestamp, body)})
    return headers


def test_consumer_accepts_the_receivers_push(make_client, consumer, db):
    """A push forwarded to consumer.php is answered 204, handled, and the gateway gets 2."""
    client = make_client(forward_url=consumer.url, forward_secret=SECRET)
    res = client.get('/', {'guid': 'g-1', 'phone': '0912345678', 'message': VIETNAMESE})
    assert res.body == DONE, consumer.log()
    assert consumer.rows('sms') == [('g-1', '0912345678', VIETNAMESE, rows(db)[0]['received_at'])]
    assert [r[0] for r in consumer.rows('handled')] == ['g-1']
    assert rows(db)[0]['state'] == 'processed'


def test_consumer_handles_a_webhook_id_once(consumer, captured):
    """The same request twice: 204 both times, the work done once."""
    headers, body = captured()
    assert send(consumer, headers, body)[0] == 204
    assert send(consumer, resigned(headers, body), body)[0] == 204
    assert len(consumer.rows('sms')) == 1


def test_consumer_refuses_a_changed_body(consumer, captured):
    """A body changed after signing gets 401 and is not handled."""
    headers, body = captured()
    changed = body.replace('Đà Nẵng'.encode('utf-8'), 'Hà Nội'.encode('utf-8'))
    assert changed != body
    status, text = send(consumer, headers, changed)
    assert status == 401 and 'signature does not match' in text
    assert consumer.rows('sms') == []


def test_consumer_refuses_a_wrong_secret(make_client, consumer, db):
    """The receiver signing with another secret gets 401: the row failed, the gateway "try again"."""
    client = make_client(forward_url=consumer.url, forward_secret=WRONG_SECRET)
    res = client.get('/?guid=g-1&phone=0912345678&message=hi', status=200,
                     expect_errors=True)
    assert res.body == RETRY
    assert 'HTTP 401' in res.errors
    [row] = rows(db)
    assert row['state'] == 'failed' and 'signature does not match' in row['last_error']
    assert consumer.rows('sms') == []


@pytest.mark.parametrize('offset', [-305, -3600, +305])   # 5 s over: the clocks tick apart
def test_consumer_refuses_a_stale_timestamp(consumer, captured, offset):
    """A correctly signed request whose timestamp is over 5 minutes off gets 401."""
    headers, body = captured()
    status, text = send(consumer, resigned(headers, body, int(time.time()) + offset), body)
    assert status == 401 and 'webhook-timestamp' in text
    assert consumer.rows('sms') == []


def test_consumer_accepts_any_matching_v1_entry(consumer, captured):
    """webhook-signature may list several entries; one v1 that matches is enough, others
    (another key's, another scheme's) are passed over."""
    headers, body = captured()
    good = headers['webhook-signature']
    other = resigned(headers, body, int(headers['webhook-timestamp']),
                     WRONG_SECRET)['webhook-signature']
    headers['webhook-signature'] = ' '.join([other, 'v1a,' + good[3:], good])
    assert send(consumer, headers, body)[0] == 204
    headers, body = captured('g-2')
    good = headers['webhook-signature']
    headers['webhook-signature'] = ' '.join([other, 'v1a,' + good[3:], 'v2,' + good[3:]])
    assert send(consumer, headers, body)[0] == 401
    assert len(consumer.rows('sms')) == 1


@pytest.mark.parametrize('missing', ['webhook-id', 'webhook-timestamp', 'webhook-signature'])
def test_consumer_refuses_a_missing_header(consumer, captured, missing):
    """A request without one of the three headers gets 400."""
    headers, body = captured()
    del headers[missing]
    assert send(consumer, headers, body)[0] == 400
    assert consumer.rows('sms') == []


def test_consumer_refuses_other_methods_and_huge_bodies(consumer, captured):
    """GET gets 405; a body over 64 KiB gets 413."""
    headers, body = captured()
    assert send(consumer, {}, None, method='GET')[0] == 405
    big = body + b' ' * 65536
    assert send(consumer, resigned(headers, big), big)[0] == 413


def test_consumer_refuses_a_signed_body_that_is_not_the_receivers(consumer, captured):
    """A correctly signed body that is not the receiver's JSON gets 400."""
    headers, _ = captured()
    body = json.dumps({'hello': 'world'}).encode()
    assert send(consumer, resigned(headers, body), body)[0] == 400


def test_consumer_log_has_no_message_phone_or_secret(make_client, consumer, captured):
    """The consumer's error log names its refusals without message, phone or secret."""
    headers, body = captured()
    send(consumer, headers, body.replace(b'0912345678', b'0999999999'))
    make_client(forward_url=consumer.url, forward_secret=WRONG_SECRET).get(
        '/?guid=g-9&phone=0912345678&message=hi', status=200, expect_errors=True)
    log = consumer.log()
    assert log.count('fibosms-consumer: 401') == 2, log
    for private in ('0912345678', '0999999999', 'Nẵng', SECRET[6:], WRONG_SECRET[6:]):
        assert private not in log


def test_consumer_without_a_secret_refuses_everything(tmp_path, make_client, db):
    """Not configured (no secret): 500 for every request, so the receiver keeps retrying."""
    server = Consumer(None, str(tmp_path / 'c' / 'consumer.sqlite3'), str(tmp_path / 'php.log'))
    try:
        client = make_client(forward_url=server.url, forward_secret=SECRET)
        res = client.get('/?guid=g-1&phone=0912345678&message=hi', status=200,
                         expect_errors=True)
        assert 'HTTP 500' in res.errors
        assert 'not configured' in rows(db)[0]['last_error']
    finally:
        server.stop()


def test_consumer_whose_work_fails_answers_500_and_handles_it_later(tmp_path, make_client,
                                                                    db):
    """Work that fails (here: the database cannot be opened) gets 500 and records no id; the
    receiver's next try, once that is fixed, is handled."""
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('a file where the database folder should be')
    server = Consumer(SECRET, str(blocker / 'consumer.sqlite3'), str(tmp_path / 'php.log'))
    client = make_client(forward_url=server.url, forward_secret=SECRET)
    try:
        res = client.get('/?guid=g-1&phone=0912345678&message=hi', status=200,
                         expect_errors=True)
        assert 'HTTP 500' in res.errors
        assert 'the work failed: PDOException' in rows(db)[0]['last_error']
        [line] = [l for l in server.log().splitlines() if 'fibosms-consumer' in l]
        assert 'PDOException: ' in line
    finally:
        server.stop()
    blocker.unlink()
    server = Consumer(SECRET, str(blocker / 'consumer.sqlite3'), str(tmp_path / 'php2.log'))
    client = make_client(forward_url=server.url, forward_secret=SECRET)
    try:
        assert client.get('/?guid=g-1&phone=0912345678&message=hi').body == DONE
        assert [r[0] for r in server.rows('sms')] == ['g-1']
    finally:
        server.stop()


def addon_domain(tmp_path):
    """A cPanel account: home/, and consumer.php in public_html/addon.example/, an addon
    domain's folder, which is inside the main domain's public_html: (home, script)."""
    import shutil
    home = tmp_path / 'home'
    www = home / 'public_html' / 'addon.example'
    www.mkdir(parents=True)
    script = str(www / 'consumer.php')
    shutil.copyfile(os.path.join(DEPLOY, 'consumer.php'), script)
    return home, script


def test_consumer_keeps_its_database_in_its_users_home_by_default(tmp_path, make_client):
    """Without FIBOSMS_CONSUMER_DB the page keeps its database in fibosms-consumer/ in the home
    folder (0700, the file 0600), never beside its document root: for an addon domain that is
    the main domain's public_html, where the file could be downloaded."""
    home, script = addon_domain(tmp_path)
    expected = str(home / 'fibosms-consumer' / 'consumer.sqlite3')
    server = Consumer(SECRET, expected, str(tmp_path / 'php.log'), script=script,
                      default_db=True, env={'HOME': str(home)})
    try:
        client = make_client(forward_url=server.url, forward_secret=SECRET)
        assert client.get('/?guid=g-1&phone=0912345678&message=hi').body == DONE
        assert [r[0] for r in server.rows('sms')] == ['g-1']
        assert stat.S_IMODE(os.stat(os.path.dirname(expected)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(expected).st_mode) == 0o600
        assert sorted(os.listdir(str(home / 'public_html'))) == ['addon.example']
        assert sorted(os.listdir(os.path.dirname(script))) == ['consumer.php']
    finally:
        server.stop()


@pytest.mark.parametrize('where', ['public_html/fibosms-consumer/c.sqlite3',
                                   'public_html/addon.example/data/c.sqlite3',
                                   'public_html/addon.example/c.sqlite3', 'relative'])
def test_consumer_refuses_a_database_a_web_server_may_serve(tmp_path, make_client, where):
    """FIBOSMS_CONSUMER_DB inside the web root, or inside any public_html, is refused (500,
    one log line naming the setting): nothing is written, and the receiver keeps the message
    and answers "try again"."""
    home, script = addon_domain(tmp_path)
    db = 'c.sqlite3' if where == 'relative' else str(home / where)
    server = Consumer(SECRET, db, str(tmp_path / 'php.log'), script=script,
                      env={'HOME': str(home)})
    try:
        client = make_client(forward_url=server.url, forward_secret=SECRET)
        res = client.get('/?guid=g-1&phone=0912345678&message=hi', status=200,
                         expect_errors=True)
        assert res.body == RETRY
        assert 'not configured: the database' in server.log()
        assert 'FIBOSMS_CONSUMER_DB' in server.log()
        found = [os.path.join(d, f) for d, _, files in os.walk(str(tmp_path)) for f in files
                 if 'sqlite3' in f and 'fibosms-data' not in d]
        assert found == []
    finally:
        server.stop()
