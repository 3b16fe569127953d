"""Forwarding (forward.py): each stored message POSTed to a real HTTP server on 127.0.0.1
standing in for the business's application, what each of its answers does to the row and to
the gateway's answer, the settings, and `storage.py retry`. Every signature the receiver made
in a test is checked by the official `standardwebhooks` package when the test ends."""
import base64
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import forward
import oracle
import receiver
import smallserver
from support import Application, free_port
from conftest import DONE, RETRY, ROOT, rows
from test_hook import fetch

SECRET = 'whsec_' + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = 'whsec_' + base64.b64encode(bytes(range(100, 132))).decode()
PUSH = '/?guid=g-1&phone=0912345678&message=Xin+ch%C3%A0o'
TEXT = 'Xin chào'


@pytest.fixture
def app():
    """The application: a real server on 127.0.0.1. When the test ends, every signed request
    it got is verified by the official package with `app.secret` (SECRET unless changed)."""
    application = Application()
    application.secret = SECRET
    yield application
    application.stop()
    signed = [(r.headers, r.body) for r in application.requests
              if 'webhook-signature' in r.headers]
    if signed:
        assert oracle.verify(application.secret, signed) == ['ok'] * len(signed)


@pytest.fixture
def forwarding(make_client, app):
    """forwarding(**settings) -> a client of the app forwarding to `app` with SECRET."""
    def make(**settings):
        settings.setdefault('forward_url', app.url)
        settings.setdefault('forward_secret', SECRET)
        return make_client(**settings)
    return make


def only_row(db):
    [row] = rows(db)
    return row


# -- The request ------------------------------------------------------------------------------

def test_forward_is_a_signed_standard_webhooks_post(forwarding, app):
    """The request is a POST of JSON with webhook-id (the guid), a current timestamp, a v1
    signature the official package accepts, and User-Agent fibosms-receiver."""
    before = int(time.time())
    assert forwarding().get(PUSH).body == DONE
    [request] = app.requests
    assert (request.method, request.path) == ('POST', '/hook')
    headers = request.headers
    assert headers['Content-Type'] == 'application/json'
    assert headers['User-Agent'] == 'fibosms-receiver'
    assert headers['webhook-id'] == 'g-1'
    assert before <= int(headers['webhook-timestamp']) <= time.time()
    assert headers['webhook-signature'].startswith('v1,')
    assert oracle.verify(SECRET, [(headers, request.body)]) == ['ok']
    assert oracle.verify(OTHER_SECRET, [(headers, request.body)]) != ['ok']


def test_forward_body_is_the_stored_row_as_utf8_json(forwarding, app, db):
    """The body holds the stored columns, UTF-8 and not ASCII-escaped, extra as an object."""
    forwarding().get(PUSH + '&shortcode=8085')
    [request] = app.requests
    assert TEXT.encode('utf-8') in request.body and b'\\u' not in request.body
    sent = json.loads(request.body.decode('utf-8'))
    row = only_row(db)
    assert sorted(sent) == sorted(forward.FIELDS)
    for name in forward.FIELDS:
        if name != 'extra':
            assert sent[name] == row[name], name
    assert sent['extra'] == {'shortcode': '8085'}
    assert (sent['message'], sent['phone_normalised'], sent['deliveries']) == (
        TEXT, '84912345678', 1)


def test_forward_of_a_message_not_utf8_on_the_wire_carries_the_decoded_text(forwarding, app):
    """A message sent in Windows-1258 is forwarded as the text it decodes to, as UTF-8."""
    forwarding().get('/?guid=g-1&phone=0912345678&message=ch%E0o+Vi%EA%F2t')
    sent = json.loads(app.requests[0].body.decode('utf-8'))
    assert (sent['message'], sent['charset']) == ('chào Vi\u00ea\u0323t', 'cp1258')


@pytest.mark.parametrize('guid, expected', [
    ('3f2504e0-4f89-11d3-9a0c-0305e82c3301', '3f2504e0-4f89-11d3-9a0c-0305e82c3301'),
    ('ABC_def-1', 'ABC_def-1'),
    ('a.b', 'a%2Eb'),                       # the spec: no '.' in the id
    ('Đà Nẵng', '%C4%90%C3%A0%20N%E1%BA%B5ng'),
    ('a%2Eb', 'a%252Eb'),                   # not the same id as 'a.b'
    ('x\r\nInjected: 1', 'x%0D%0AInjected%3A%201'),
])
def test_webhook_id_is_the_guid_or_its_percent_encoding(forwarding, app, guid, expected):
    """webhook-id is the guid itself, or percent-encoded when it holds other characters than
    letters, digits, '-' and '_'; the official package accepts the signature either way."""
    forwarding().get('/', {'guid': guid, 'phone': '0912345678', 'message': 'hi'})
    [request] = app.requests
    assert request.headers['webhook-id'] == expected
    assert 'Injected' not in [name for name in request.headers]
    assert json.loads(request.body.decode('utf-8'))['guid'] == guid


def test_forward_without_a_secret_is_unsigned(forwarding, app, db):
    """Without a secret the request has webhook-id and -timestamp but no signature."""
    assert forwarding(forward_secret=None).get(PUSH).body == DONE
    [request] = app.requests
    assert 'webhook-signature' not in request.headers
    assert request.headers['webhook-id'] == 'g-1' and request.headers['webhook-timestamp']


def test_forward_url_credentials_become_basic_authentication(forwarding, app):
    """user:password in the URL is sent as HTTP Basic authentication."""
    url = app.url.replace('http://', 'http://shop:p%40ss@')
    assert forwarding(forward_url=url).get(PUSH).body == DONE
    expected = 'Basic ' + base64.b64encode(b'shop:p@ss').decode()
    assert app.requests[0].headers['Authorization'] == expected


def test_forward_keeps_the_url_query_string(forwarding, app):
    """The URL's path and query string are the request's."""
    forwarding(forward_url=app.url + '/sms?site=2').get(PUSH)
    assert app.requests[0].path == '/hook/sms?site=2'


# -- The outcome ------------------------------------------------------------------------------

@pytest.mark.parametrize('status', [200, 201, 202, 204, 299])
def test_forward_2xx_marks_processed_and_answers_2(forwarding, app, db, status):
    """Any 2xx answer: the row is processed and the gateway gets <Status>2</Status>."""
    app.status = status
    res = forwarding().get(PUSH)
    assert (res.status_int, res.body) == (200, DONE)
    assert res.errors == ''
    row = only_row(db)
    assert (row['state'], row['hook_runs'], row['last_error']) == ('processed', 1, None)


def test_forward_happens_once_after_success(forwarding, app, db):
    """Once the application accepted a message, later deliveries are not forwarded."""
    client = forwarding()
    for _ in range(3):
        assert client.get(PUSH).body == DONE
    assert len(app.requests) == 1
    assert only_row(db)['deliveries'] == 3


def test_forward_500_fails_with_one_log_line(forwarding, app, db):
    """A 500 answer: row failed with the status and the answer's text in last_error, try again
    <Status>1</Status>, one log line naming status and host, no message text."""
    app.status, app.body = 500, b'Database is down'
    res = forwarding().get(PUSH, status=200, expect_errors=True)
    assert res.body == RETRY
    [line] = res.errors.splitlines()
    assert 'hook failed: forward to 127.0.0.1:%d: HTTP 500' % app.port in line
    assert "'g-1'" in line
    for private in ('chào', 'ch%C3%A0o', '0912345678', '/hook', 'Database is down', SECRET):
        assert private not in line
    row = only_row(db)
    assert (row['state'], row['claimed_until']) == ('failed', None)
    assert 'HTTP 500 Internal Server Error: Database is down' in row['last_error']


def test_gateway_retry_forwards_again_with_the_same_webhook_id(forwarding, app, db):
    """After a failed forward the gateway's retry forwards again, same webhook-id and body
    but for `deliveries`, a new timestamp and signature, and is answered 2 on success."""
    app.status = 503
    client = forwarding()
    client.get(PUSH, status=200, expect_errors=True)
    app.status = 204
    time.sleep(1.1)     # a later second: a new timestamp
    assert client.get(PUSH).body == DONE
    first, second = app.requests
    assert first.headers['webhook-id'] == second.headers['webhook-id'] == 'g-1'
    assert first.headers['webhook-timestamp'] != second.headers['webhook-timestamp']
    assert first.headers['webhook-signature'] != second.headers['webhook-signature']
    one, two = (json.loads(r.body.decode('utf-8')) for r in (first, second))
    assert (one['deliveries'], two['deliveries']) == (1, 2)
    row = only_row(db)
    assert (row['state'], row['hook_runs'], row['last_error']) == ('processed', 2, None)


@pytest.mark.parametrize('status', [301, 302, 303, 307, 308])
def test_forward_redirect_is_not_followed(forwarding, app, db, status):
    """A 3xx is a failure, not followed; the reason names the status and says fix the URL."""
    app.status = status
    app.headers = [('Location', app.url + '/elsewhere?token=abc')]
    res = forwarding().get(PUSH, status=200, expect_errors=True)
    assert len(app.requests) == 1
    assert 'HTTP %d, a redirect: not followed; fix FIBOSMS_FORWARD_URL' % status in res.errors
    assert 'elsewhere' not in res.errors
    row = only_row(db)
    assert row['state'] == 'failed' and 'HTTP %d' % status in row['last_error']
    assert 'token=abc' not in row['last_error']


def test_forward_application_that_hangs_fails_at_the_timeout(make_client, app, db):
    """An application that never answers: the forward gives up at its timeout, the row is
    failed (its claim released) and the gateway gets try again well before the hook's 20 s."""
    app.hang = 30
    client = make_client(handler=forward.Forwarder(app.url, SECRET, timeout=0.5))
    start = time.monotonic()
    res = client.get(PUSH, status=200, expect_errors=True)
    assert 0.5 <= time.monotonic() - start < 3
    assert 'no answer within 0.5 s' in res.errors
    row = only_row(db)
    assert (row['state'], row['claimed_until']) == ('failed', None)


def test_forward_answer_that_trickles_is_cut_off_at_the_timeout(make_client, app, db):
    """An application sending its answer a byte at a time is cut off at the timeout."""
    app.trickle = True
    client = make_client(handler=forward.Forwarder(app.url, SECRET, timeout=1.0))
    start = time.monotonic()
    res = client.get(PUSH, status=200, expect_errors=True)
    assert 1.0 <= time.monotonic() - start < 4
    assert 'no answer within 1 s' in res.errors
    assert only_row(db)['state'] == 'failed'


def test_forward_timeout_is_below_the_hooks():
    """The forward's bound is below the hook's, so a hang is recorded, not left running."""
    assert 0 < forward.TIMEOUT < receiver.HOOK_WAIT


def test_forward_to_a_refused_port_fails(forwarding, db):
    """Nothing listening: the row is failed with ConnectionRefusedError, try again for the gateway."""
    port = free_port()
    res = forwarding(forward_url='http://127.0.0.1:%d/hook' % port).get(
        PUSH, status=200, expect_errors=True)
    assert 'forward to 127.0.0.1:%d: ConnectionRefusedError' % port in res.errors
    assert only_row(db)['state'] == 'failed'


def test_forward_to_an_unknown_host_fails(forwarding, db):
    """A name that does not resolve (.invalid, RFC 2606) fails the forward."""
    res = forwarding(forward_url='http://fibosms-test.invalid/hook').get(
        PUSH, status=200, expect_errors=True)
    assert 'forward to fibosms-test.invalid: gaierror' in res.errors
    assert only_row(db)['state'] == 'failed'


@pytest.mark.parametrize('status', [200, 500])
def test_forward_reads_a_bounded_part_of_a_huge_answer(forwarding, app, db, status):
    """A 50 MB answer is not read: the outcome comes at once and last_error stays small."""
    app.status, app.huge = status, 50 * 1024 * 1024
    start = time.monotonic()
    res = forwarding().get(PUSH, status='*', expect_errors=True)
    assert time.monotonic() - start < 5
    row = only_row(db)
    if status == 200:
        assert (res.body, row['state']) == (DONE, 'processed')
    else:
        assert (res.body, row['state']) == (RETRY, 'failed')
        assert 'x' * forward.MAX_ANSWER in row['last_error']
        assert 'x' * (forward.MAX_ANSWER + 1) not in row['last_error']


def test_forward_https_checks_the_certificate(forwarding, db, tmp_path, monkeypatch):
    """https:// verifies the certificate against the system's store: a self-signed one is
    refused; trusted (SSL_CERT_FILE, OpenSSL's own override of the store), it is accepted."""
    import support
    cert = support.make_certificate(str(tmp_path))
    tls = Application(cert=cert)
    tls.secret = SECRET
    try:
        client = forwarding(forward_url=tls.url)
        res = client.get(PUSH, status=200, expect_errors=True)
        assert 'forward to 127.0.0.1:%d: SSL' % tls.port in res.errors
        assert 'certificate verify failed' in only_row(db)['last_error']
        assert tls.requests == []
        monkeypatch.setenv('SSL_CERT_FILE', cert[0])
        assert client.get(PUSH).body == DONE
        assert len(tls.requests) == 1
        assert oracle.verify(SECRET, [(r.headers, r.body) for r in tls.requests]) == ['ok']
    finally:
        tls.stop()


def test_delivery_during_a_forward_answers_try_again_without_a_second_forward(db, app):
    """While a forward is in flight, another delivery of the guid gets try again (200,
    <Status>1</Status>) and no request."""
    app.hang = 10
    server = smallserver.make_server('127.0.0.1', 0, receiver.make_app(
        db=db, forward_url=app.url, forward_secret=SECRET))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = 'http://127.0.0.1:%d' % server.server_address[1]
    first = []
    pusher = threading.Thread(target=lambda: first.append(fetch(base + PUSH)))
    pusher.start()
    try:
        assert app.arrived.wait(5)
        assert fetch(base + PUSH) == (200, RETRY)
        app.release.set()
        pusher.join(15)
        assert first == [(200, DONE)]
        assert len(app.requests) == 1
    finally:
        app.release.set()
        server.shutdown()
        server.server_close()


# -- Settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize('where', ['wsgi environ', 'os.environ'])
def test_forward_settings_from_the_environment(make_client, app, db, monkeypatch, where):
    """FIBOSMS_FORWARD_URL and FIBOSMS_FORWARD_SECRET from the WSGI environ or the process."""
    settings = {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
    if where == 'wsgi environ':
        client = make_client(extra_environ=settings)
    else:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        client = make_client()
    assert client.get(PUSH).body == DONE
    assert len(app.requests) == 1 and 'webhook-signature' in app.requests[0].headers


def test_forward_and_handler_together_is_a_configuration_error(forwarding, app, db):
    """FIBOSMS_FORWARD_URL with FIBOSMS_HANDLER: one log line, try again, the message stored and
    failed with the reason, nothing forwarded, no hook run."""
    calls = []
    res = forwarding(handler=calls.append).get(PUSH, status=200, expect_errors=True)
    assert res.body == RETRY
    [line] = res.errors.splitlines()
    assert 'configuration: FIBOSMS_FORWARD_URL and FIBOSMS_HANDLER are both set' in line
    assert app.requests == [] and calls == []
    row = only_row(db)
    assert row['message'] == TEXT and row['state'] == 'failed'
    assert 'both set' in row['last_error']


MALFORMED_SECRETS = [
    'dGhpcyBpcyBub3QgYSBzZWNyZXQgYXQgYWxsIQ==',         # no whsec_ prefix
    'whsec_',
    'whsec_' + base64.b64encode(b'23 bytes is too short!!').decode(),
    'whsec_' + base64.b64encode(bytes(65)).decode(),    # over the spec's 512 bits
    'whsec_not*base64*at*all*but*long*enough*to*pass*',
    'whsec_' + base64.b64encode(bytes(32)).decode() + ' ',
    'whsec_Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFy\u00e9',
]


@pytest.mark.parametrize('secret', MALFORMED_SECRETS)
def test_malformed_secret_is_a_configuration_error(forwarding, app, db, secret):
    """A secret that is not whsec_ + base64 of 24 to 64 bytes: try again, one log line that names
    the setting but not the secret, the message stored and failed, nothing forwarded."""
    res = forwarding(forward_secret=secret).get(PUSH, status=200, expect_errors=True)
    [line] = res.errors.splitlines()
    assert 'configuration: FIBOSMS_FORWARD_SECRET is not whsec_' in line
    assert app.requests == []
    row = only_row(db)
    assert row['state'] == 'failed'
    for text in (line, row['last_error']):
        for private in (secret, secret[len('whsec_'):]):
            assert private in ('', 'whsec_') or private not in text


@pytest.mark.parametrize('url', [
    'ftp://127.0.0.1/hook', 'http://', '127.0.0.1:8080/hook', 'http://127.0.0.1:99999/',
    'http://127.0.0.1:port/', 'http://127.0.0.1/a b', 'http://127.0.0.1/\r\nX: 1',
    'http://127.0.0.1/đ', 'http://[::1/hook', 'http://:8080/hook', 'mailto:shop@example.com',
])
def test_unusable_url_is_a_configuration_error(forwarding, db, url):
    """A URL that is not http(s)://host/...: try again, one line naming the setting, row failed."""
    res = forwarding(forward_url=url).get(PUSH, status=200, expect_errors=True)
    [line] = res.errors.splitlines()
    assert 'configuration: FIBOSMS_FORWARD_URL' in line
    assert only_row(db)['state'] == 'failed'


def test_failed_forward_log_has_no_path_query_credentials_or_secret(forwarding, app, db):
    """The log line names host and status only: not the URL's credentials, path or query."""
    app.status = 500
    url = app.url.replace('http://', 'http://shop:hunter2@') + '/private?key=k3y'
    res = forwarding(forward_url=url).get(PUSH, status=200, expect_errors=True)
    [line] = res.errors.splitlines()
    assert 'forward to 127.0.0.1:%d: HTTP 500' % app.port in line
    for private in ('shop', 'hunter2', 'private', 'k3y', SECRET, SECRET[6:]):
        assert private not in line


def test_secret_is_never_stored(forwarding, app, db):
    """Neither the secret nor its key is anywhere in the database file, after a success and a
    failure."""
    client = forwarding()
    client.get(PUSH)
    app.status = 500
    client.get('/?guid=g-2&phone=0912345678&message=x', status=200, expect_errors=True)
    data = b''
    for name in os.listdir(os.path.dirname(db)):
        with open(os.path.join(os.path.dirname(db), name), 'rb') as f:
            data += f.read()
    assert len(rows(db)) == 2
    for secret in (SECRET, SECRET[6:]):
        assert secret.encode() not in data
    assert forward.secret_key(SECRET) not in data


def test_push_without_forwarding_never_imports_forward():
    """Without FIBOSMS_FORWARD_URL a push loads neither forward.py nor http.client nor ssl."""
    code = '''
import io, sys, wsgiref.util
sys.path.insert(0, %r)
import receiver
env = {'QUERY_STRING': 'guid=g-1&phone=0912345678&message=hi', 'wsgi.errors': sys.stderr,
       'FIBOSMS_DB': %r, 'REMOTE_ADDR': '127.0.0.1'}
wsgiref.util.setup_testing_defaults(env)
out = receiver.application(env, lambda status, headers: None)
assert b''.join(out) == b'<Status>2</Status>', out
print(' '.join(m for m in ('forward', 'http.client', 'ssl', 'hmac') if m in sys.modules))
'''
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
        done = subprocess.run(
            [sys.executable, '-c', code % (ROOT, os.path.join(folder, 'm.sqlite3'))], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == ''


# -- storage.py retry -------------------------------------------------------------------------

def run_retry(db, settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
    env.update(settings)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db, 'retry'], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def test_retry_command_forwards_failed_messages(forwarding, app, db):
    """`storage.py retry` with FIBOSMS_FORWARD_URL and _SECRET forwards what failed, with the
    same webhook-id, and exits 0 once the application accepted them all."""
    app.status = 500
    client = forwarding()
    for guid in ('g-1', 'g-2'):
        client.get('/?guid=%s&phone=0912345678&message=hi' % guid, status=200,
                   expect_errors=True)
    settings = {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
    done = run_retry(db, settings)
    assert done.returncode == 1
    assert done.stdout.decode().splitlines() == [
        'g-1 failed: forward to 127.0.0.1:%d: HTTP 500' % app.port,
        'g-2 failed: forward to 127.0.0.1:%d: HTTP 500' % app.port]
    app.status = 204
    done = run_retry(db, settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ['g-1', 'processed', 'g-2', 'processed']
    assert [r.headers['webhook-id'] for r in app.requests] == ['g-1', 'g-2'] * 3
    assert [r['state'] for r in rows(db)] == ['processed', 'processed']
    assert SECRET not in done.stdout.decode() + done.stderr.decode()


def test_retry_command_refuses_forward_and_handler_together(forwarding, app, db):
    """`storage.py retry` with a handler and a forward URL forwards nothing and says why."""
    app.status = 500
    forwarding().get(PUSH, status=200, expect_errors=True)
    done = run_retry(db, {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_HANDLER': 'json:dumps'})
    assert done.returncode == 1
    assert 'configuration: FIBOSMS_FORWARD_URL and FIBOSMS_HANDLER' in done.stdout.decode()
    assert len(app.requests) == 1


def test_readme_secret_command_makes_a_usable_secret():
    """README's one-line command makes a secret forward.py and the official package take."""
    import re
    with open(os.path.join(ROOT, 'docs', 'FORWARDING.md'), encoding='utf-8') as f:
        command = re.search(r'^(python3 -c .*whsec_.*)$', f.read(), re.M).group(1)
    import shlex
    done = subprocess.run([sys.executable] + shlex.split(command)[1:], stdout=subprocess.PIPE,
                          timeout=30)
    secret = done.stdout.decode().strip()
    assert len(forward.secret_key(secret)) == 32
    body = b'{"guid":"g-1"}'
    headers = {'webhook-id': 'g-1', 'webhook-timestamp': str(int(time.time()))}
    headers['webhook-signature'] = forward.sign(forward.secret_key(secret), 'g-1',
                                                int(headers['webhook-timestamp']), body)
    assert oracle.verify(secret, [(headers, body)]) == ['ok']


def readme_section():
    """docs/FORWARDING.md's part on forwarding (README's, before it moved there)."""
    with open(os.path.join(ROOT, 'docs', 'FORWARDING.md'), encoding='utf-8') as f:
        text = f.read()
    return text.split('## Forwarding to your application\n')[1].split('\n## ')[0]


def test_readme_example_request_is_signed_as_it_says():
    """README's example request carries the signature of its body with its example secret."""
    import re
    section = readme_section()
    secret = re.search(r'here signed with `(whsec_[^`]+)`', section).group(1)
    block = section.split('here signed with')[1].split('```\n')[1]
    head, body = block.rstrip('\n').split('\n\n')
    headers = dict(line.split(': ', 1) for line in head.splitlines()[1:])
    body = body.encode('utf-8')
    assert headers['webhook-signature'] == forward.sign(
        forward.secret_key(secret), headers['webhook-id'], int(headers['webhook-timestamp']),
        body)
    assert sorted(json.loads(body.decode('utf-8'))) == sorted(forward.FIELDS)


def test_readme_python_check_takes_real_forwards_and_refuses_forgeries(forwarding, app):
    """README's few lines of Python accept the receiver's request and refuse a changed body,
    another secret and a timestamp over 5 minutes old."""
    code = readme_section().split('```python\n')[1].split('```')[0]
    namespace = {}
    exec(compile(code, 'FORWARDING.md', 'exec'), namespace)
    verify = namespace['verify']
    forwarding().get(PUSH)
    [request] = app.requests
    headers, body = request.headers, request.body
    assert verify(SECRET, headers, body) is True
    assert verify(SECRET, headers, body.replace(b'0912345678', b'0912345679')) is False
    assert verify(OTHER_SECRET, headers, body) is False
    stale = dict(headers, **{'webhook-timestamp': str(int(time.time()) - 301)})
    stale['webhook-signature'] = forward.sign(forward.secret_key(SECRET), 'g-1',
                                              int(stale['webhook-timestamp']), body)
    assert verify(SECRET, stale, body) is False


def test_readme_states_the_forward_timeout():
    """README gives the forward's bound as the code has it."""
    assert 'no answer within %d seconds' % forward.TIMEOUT in ' '.join(readme_section().split())
