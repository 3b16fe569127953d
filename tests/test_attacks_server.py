"""`python3 receiver.py` facing clients itself, attacked over real sockets on 127.0.0.1.

Forged caller addresses through header spellings, wrong or missing settings, the secret sent
again under other names and spellings, broken request lines and headers, and slow or greedy
clients. Every answer must be a Status document with a status line, nothing forged is stored,
and the server's log (its stderr) never holds the secret, the phone or the message text.
A few cases run against the app itself too, where a socket adds nothing.
"""
import os
import select
import socket
import threading
import time
from urllib.parse import quote, unquote_plus

import pytest

import receiver
import smallserver
from conftest import DONE, RETRY, ROOT, rows
from support import Server

SECRET = 'Att4ck-k3y_9d1e-f00d'
PHONE = '0987654321'
TEXT = 'Tin nhắn riêng 7731'
PROXY_ENV = {'FIBOSMS_TOKEN': SECRET, 'FIBOSMS_TRUSTED_PROXIES': '127.0.0.1',
             'FIBOSMS_ALLOW': '203.0.113.5'}


def spellings(secret):
    """The secret as it may be written in a URL: plain, escaped, every byte escaped, %u."""
    raw = secret.encode('utf-8')
    return {secret, quote(secret, safe=''), ''.join('%%%02X' % b for b in raw),
            ''.join('%%%02x' % b for b in raw), ''.join('%%u%04X' % ord(c) for c in secret)}


def query(guid, phone=PHONE, text=TEXT):
    return 'guid=%s&phone=%s&message=%s' % (guid, quote(phone), quote(text))


# -- Talking to the server ---------------------------------------------------------------------

def exchange(port, data, half_close=True, timeout=10.0):
    """Send raw bytes (and half-close), read until the server closes: (code, head, body);
    code is None when the answer has no status line."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_answer(sock)
    finally:
        sock.close()


def read_answer(sock):
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return parse_answer(b''.join(chunks))


def parse_answer(answer):
    if not answer.startswith(b'HTTP/1.'):
        return None, b'', answer
    head, _, body = answer.partition(b'\r\n\r\n')
    return int(head.split(b' ', 2)[1]), head, body


def get(port, target, headers=()):
    """A GET with extra header lines (exact bytes): (code, head, body)."""
    lines = [b'GET ' + target.encode('latin-1') + b' HTTP/1.1', b'Host: 127.0.0.1']
    lines += [h if isinstance(h, bytes) else h.encode('latin-1') for h in headers]
    return exchange(port, b'\r\n'.join(lines) + b'\r\n\r\n')


TRY_AGAIN = 'try again'     # an `expected` of assert_status_document: 200 <Status>1</Status>


def assert_status_document(code, head, body, expected=None):
    """A status line, text/xml, and a Status document, 2 only with 200; `expected` a code
    (200: stored, <Status>2</Status>) or TRY_AGAIN (200, <Status>1</Status>)."""
    assert code is not None, body
    assert body in ((DONE, RETRY) if code == 200 else (RETRY,)), (code, head, body)
    assert b'Content-Type: text/xml; charset=utf-8' in head, head
    if expected == TRY_AGAIN:
        assert (code, body) == (200, RETRY), (code, head, body)
    elif expected == 200:
        assert (code, body) == (200, DONE), (code, head, body)
    elif expected is not None:
        assert code == expected, (code, head, body)


def assert_log_clean(server):
    """The server's log holds no spelling of the secret, no phone and no text."""
    log = server.log()
    for secret in spellings(SECRET) | {PHONE, TEXT, quote(TEXT), quote(PHONE), 'Tin+nh'}:
        assert secret not in log, (secret, log)
    assert 'Traceback' not in log, log


def database_text(db):
    """The database file and its -wal, as latin-1 text: every byte, one character."""
    text = ''
    for path in (db, db + '-wal'):
        if os.path.exists(path):
            with open(path, 'rb') as f:
                text += f.read().decode('latin-1')
    return text


def threads_and_fds(pid):
    with open('/proc/%d/status' % pid) as f:
        threads = [int(line.split()[1]) for line in f if line.startswith('Threads:')][0]
    return threads, len(os.listdir('/proc/%d/fd' % pid))


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        return [int(line.split()[1]) for line in f if line.startswith('VmRSS:')][0]


@pytest.fixture
def server(tmp_path):
    """receiver.py with a secret, behind a trusted proxy (127.0.0.1), one address allowed."""
    with Server(str(tmp_path / 'data' / 'messages.sqlite3'), str(tmp_path / 'server.log'),
                PROXY_ENV) as running:
        yield running
        assert_log_clean(running)


@pytest.fixture
def plain(tmp_path):
    """receiver.py with a secret and nothing else."""
    with Server(str(tmp_path / 'data' / 'messages.sqlite3'), str(tmp_path / 'server.log'),
                {'FIBOSMS_TOKEN': SECRET}) as running:
        yield running
        assert_log_clean(running)


def start(tmp_path, env):
    return Server(str(tmp_path / 'data' / 'messages.sqlite3'), str(tmp_path / 'server.log'),
                  env)


# -- Forged caller addresses -------------------------------------------------------------------

ALLOWED, OTHER = '203.0.113.5', '198.51.100.9'
SPOOFS = [
    # (what, header lines, expected code): the "proxy" is us, at 127.0.0.1, and trusted
    ('the proxy names an allowed caller', ['X-Forwarded-For: ' + ALLOWED], 200),
    ('the proxy names another caller', ['X-Forwarded-For: ' + OTHER], 403),
    ('underscores after the real header', ['X-Forwarded-For: ' + OTHER,
                                           'X_Forwarded_For: ' + ALLOWED], 403),
    ('underscores before the real header', ['X_Forwarded_For: ' + ALLOWED,
                                            'X-Forwarded-For: ' + OTHER], 403),
    ('underscores alone', ['X_Forwarded_For: ' + ALLOWED], 403),
    ('one underscore, lower case', ['x-forwarded_for: ' + ALLOWED], 403),
    ('dots for dashes', ['X.Forwarded.For: ' + ALLOWED], 403),
    ('a space before the colon', ['X-Forwarded-For : ' + ALLOWED], 403),
    ('a tab in the name', ['X-Forwarded-For\t: ' + ALLOWED], 403),
    ('a folded continuation line', ['X-Forwarded-For: ' + OTHER, ' ' + ALLOWED], 400),
    ('a folded line with a tab', ['X-Forwarded-For: ' + OTHER, '\t, ' + ALLOWED], 400),
    ('the client first, the proxy last', ['X-Forwarded-For: ' + ALLOWED,
                                          'X-Forwarded-For: ' + OTHER], 403),
    ('a forged hop left of the real one', ['X-Forwarded-For: %s, %s' % (ALLOWED, OTHER)], 403),
    ('Forwarded instead', ['Forwarded: for=' + ALLOWED], 403),
    ('X-Real-IP instead', ['X-Real-IP: ' + ALLOWED], 403),
    ('Remote-Addr', ['Remote-Addr: ' + ALLOWED], 403),
    ('Remote_Addr', ['Remote_Addr: ' + ALLOWED], 403),
    ('a NUL in the name', [b'X-Forwarded-For\x00: ' + ALLOWED.encode()], 403),
    ('a non-ASCII name', [b'X-Forwarded-F\xf6r: ' + ALLOWED.encode()], 403),
]


@pytest.mark.parametrize('headers, code', [s[1:] for s in SPOOFS], ids=[s[0] for s in SPOOFS])
def test_header_spellings_never_pass_the_allowlist(server, headers, code):
    """Only the real X-Forwarded-For, as the trusted proxy wrote it last, names the caller."""
    answer = get(server.port, '/fibosms/%s?%s' % (SECRET, query('spoof')), headers)
    assert_status_document(*answer, expected=code)
    assert len(rows(server.db)) == (1 if code == 200 else 0)


def test_header_names_that_are_not_tokens_reach_no_environ_key():
    """Behind the small server, an app sees only headers named with letters, digits and '-';
    a repeated one is joined in the order sent (RFC 9110 5.3)."""
    seen = []

    def app(environ, start_response):
        seen.append({k: v for k, v in environ.items() if k.startswith('HTTP_')})
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return [b'']

    server = smallserver.make_server('127.0.0.1', 0, app)
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05})
    thread.start()
    try:
        code, _, _ = get(server.server_address[1], '/', [
            'X-Forwarded-For: 192.0.2.1', 'X_Forwarded_For: 192.0.2.66',
            'x-forwarded_for: 192.0.2.67', 'Remote_Addr: 192.0.2.68', 'X.Real.IP: 192.0.2.69',
            'X-Forwarded-For: 192.0.2.2', 'User-Agent: ok'])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert code == 200
    assert seen == [{'HTTP_HOST': '127.0.0.1', 'HTTP_X_FORWARDED_FOR': '192.0.2.1,192.0.2.2',
                     'HTTP_USER_AGENT': 'ok'}]


# -- Settings that would leave the page open ----------------------------------------------------

def shipped_placeholder():
    """FIBOSMS_TOKEN's value in deploy/settings.env, as shipped."""
    with open(os.path.join(ROOT, 'deploy', 'settings.env')) as f:
        for line in f:
            if line.startswith('FIBOSMS_TOKEN='):
                return line.strip().partition('=')[2]
    raise AssertionError('deploy/settings.env sets no FIBOSMS_TOKEN')


@pytest.mark.parametrize('token, says', [
    ('', 'FIBOSMS_TOKEN is set but empty'),
    ('   ', 'FIBOSMS_TOKEN is set but empty'),
    (shipped_placeholder(), 'FIBOSMS_TOKEN is still the example value'),
    ('SECRET', 'FIBOSMS_TOKEN is still the example value'),
    ('84', 'FIBOSMS_TOKEN is shorter than 12 characters'),
    ('Zx9-s3cr3t', 'FIBOSMS_TOKEN is shorter than 12 characters'),
], ids=['empty', 'blank', 'shipped placeholder', 'SECRET of the README', 'two digits',
        'ten characters'])
def test_empty_or_example_secret_is_try_again_with_a_line_saying_what_to_set(tmp_path, token,
                                                                             says):
    """Even a caller on this machine showing that very secret gets try again (HTTP 200,
    <Status>1</Status>); the log says why."""
    with start(tmp_path, {'FIBOSMS_TOKEN': token}) as running:
        for path in ('/fibosms/' + quote(token.strip() or 'x', safe=''), '/'):
            answer = get(running.port, '%s?%s' % (path, query('cfg')))
            assert_status_document(*answer, expected=TRY_AGAIN)
        log = running.log()
    assert rows(running.db) == []
    assert log.count(says) == 2, log
    if token.strip():
        assert token not in log


def test_no_secret_and_no_allowlist_serves_this_machine_only(tmp_path):
    """Without either, a loopback caller is served; one behind a proxy header is not."""
    with start(tmp_path, {}) as running:
        assert_status_document(*get(running.port, '/?' + query('local')), expected=200)
        for header in ('X-Forwarded-For: 198.51.100.9', 'Forwarded: for=198.51.100.9',
                       'X-Real-IP: 198.51.100.9', 'X-Forwarded-For: 127.0.0.1'):
            answer = get(running.port, '/?' + query('proxied'), [header])
            assert_status_document(*answer, expected=TRY_AGAIN)
        log = running.log()
    assert [r['guid'] for r in rows(running.db)] == ['local']
    assert log.count('neither FIBOSMS_TOKEN nor FIBOSMS_ALLOW is set') == 4, log
    assert log.count('set FIBOSMS_TOKEN') == 4


@pytest.mark.parametrize('remote, code', [
    ('127.0.0.1', 200), ('127.8.9.10', 200), ('::1', 200), ('::ffff:127.0.0.1', 200),
    ('192.0.2.1', 'try again'), ('10.0.0.1', 'try again'), ('::ffff:192.0.2.1', 'try again'), ('fe80::1%eth0', 'try again'),
    ('', 'try again'), ('localhost', 'try again'), ('127.0.0.1.evil', 'try again'), ('127.0.0.256', 'try again'),
])
def test_without_secret_or_allowlist_only_loopback_addresses_are_served(make_client, db,
                                                                        remote, code):
    """The app, given no secret and no allowlist, serves loopback callers only."""
    client = make_client(extra_environ={'REMOTE_ADDR': remote})
    res = client.get('/?' + query('addr'), expect_errors=True)
    assert (res.status_int, res.body) == (200, DONE if code == 200 else RETRY)
    assert len(rows(db)) == (1 if code == 200 else 0)


@pytest.mark.parametrize('settings, code', [
    ({'token': ''}, 'try again'), ({'token': 'Change-Me-To-A-Long-Random-Secret'}, 'try again'),
    ({'token': 'secret'}, 'try again'), ({'allow': '192.0.2.1'}, 200), ({'token': SECRET}, 200),
    ({'extra_environ': {'FIBOSMS_TOKEN': ''}}, 'try again'),
])
def test_settings_that_leave_the_page_open_are_try_again(make_client, db, settings, code):
    """An empty, example or short secret, given any way, is a configuration error."""
    settings = dict(settings)
    extra = dict(settings.pop('extra_environ', {}), REMOTE_ADDR='192.0.2.1')
    client = make_client(extra_environ=extra, **settings)
    res = client.get('/fibosms/%s?%s' % (SECRET, query('set')), expect_errors=True)
    assert (res.status_int, res.body) == (200, DONE if code == 200 else RETRY)


# -- The secret sent again, and the secret in the log -------------------------------------------

def percent_all(text):
    return ''.join('%%%02X' % b for b in text.encode('utf-8'))


COPIES = [
    ('TOKEN=', 'TOKEN=' + SECRET),
    ('token+=', 'token+=' + SECRET),
    ('Token with a space', 'Token%20=' + SECRET),
    ('escaped name', '%74oken=' + SECRET),
    ('another name', 'key=' + SECRET),
    ('every byte escaped', 'key=' + percent_all(SECRET)),
    ('%u escapes', 'key=' + ''.join('%%u%04X' % ord(c) for c in SECRET)),
    ('inside a longer value', 'key=abc' + SECRET + 'def'),
    ('as a name', SECRET + '=1'),
    ('as a bare name', SECRET),
    ('as an escaped name', percent_all(SECRET) + '=x'),
    ('twice under two names', 'a=%s&b=%s' % (SECRET, quote(SECRET))),
]


@pytest.mark.parametrize('extra', [c[1] for c in COPIES], ids=[c[0] for c in COPIES])
def test_a_second_copy_of_the_secret_is_never_stored(plain, extra):
    """Beside the secret in the path, copies under other names are dropped, not stored."""
    target = '/fibosms/%s?%s&%s&kept=yes' % (SECRET, query('copy'), extra)
    assert_status_document(*get(plain.port, target), expected=200)
    [row] = rows(plain.db)
    assert (row['message'], row['phone']) == (TEXT, PHONE)
    assert 'kept=yes' in row['raw_query'] and '"kept": "yes"' in row['extra']
    for column, value in row.items():
        if isinstance(value, str):
            assert SECRET not in value and SECRET not in unquote_plus(value), column
    text = database_text(plain.db)
    for spelling in spellings(SECRET):
        assert spelling not in text


@pytest.mark.parametrize('name', ['guid', 'phone', 'message'])
def test_the_secret_as_guid_phone_or_message_is_refused(plain, name):
    """A push whose own fields hold the secret is 400: storing it would store the secret."""
    params = {'guid': 'held', 'phone': PHONE, 'message': TEXT}
    params[name] = 'x' + SECRET
    target = '/fibosms/%s?%s' % (SECRET, '&'.join(
        '%s=%s' % (k, quote(v)) for k, v in sorted(params.items())))
    assert_status_document(*get(plain.port, target), expected=400)
    assert rows(plain.db) == [] and SECRET not in database_text(plain.db)
    assert 'parameter %r holds the secret' % name in plain.log()


@pytest.mark.parametrize('copy', ['cp1258', 'utf-8'])
def test_a_non_ascii_secret_sent_again_in_a_windows_1258_push_is_not_stored(make_client, db,
                                                                            copy):
    """The copy is found whatever charset its bytes and the push's are read in."""
    secret = 'Khóa-bí-mât-Đà-9f3a'   # every letter has a Windows-1258 byte
    client = make_client(token=secret, extra_environ={'REMOTE_ADDR': '192.0.2.1'})
    base = 'guid=w&phone=1&message=C%E1m%20%F5n'
    target = '/fibosms/%s?%s&a=%s' % (quote(secret), base, quote(secret.encode(copy)))
    assert client.get(target).body == DONE
    [row] = rows(db)
    assert row['charset'] in ('cp1258', 'latin-1') and row['extra'] == '{}'
    assert row['raw_query'] == base


PATHS = ['/{s}/%2F', '/{s}/', '/{s}//', '/{s}%2F', '/fibosms/{s}/.', '/{s};x', '//{s}',
         '/a/../{s}', '/fibosms/{e}', '/fibosms/{s}%00', '/{s}%20', '/{s}x', '/{s}/{s}']


@pytest.mark.parametrize('template', PATHS)
def test_no_spelling_of_the_path_logs_the_secret(plain, template):
    """Whatever the path, accepted or refused, the log shows a fixed marker for it."""
    target = template.format(s=SECRET, e=percent_all(SECRET)) + '?' + query('path')
    code, head, body = get(plain.port, target)
    assert_status_document(code, head, body)
    deadline = time.monotonic() + 5
    while '/***' not in plain.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"GET /***" %d' % code in plain.log()


# -- What the server itself refuses -------------------------------------------------------------

RAW = [
    ('a blank request line, then closed', b'\r\n', True, 400),
    ('a blank request line, kept open', b'\r\n\r\n', False, 400),
    ('a bare LF', b'\n', False, 400),
    ('HTTP/9.9', b'GET /fibosms/S?guid=v&phone=1 HTTP/9.9\r\n\r\n', False, 505),
    ('HTTP/2.0', b'GET / HTTP/2.0\r\n\r\n', False, 505),
    ('HTTP/1.x', b'GET / HTTP/1.x\r\n\r\n', False, 400),
    ('an HTTP/0.9 request', b'GET /fibosms/wrong?guid=v&phone=1\r\n\r\n', False, 403),
    ('an HTTP/0.9 POST', b'POST /fibosms/S\r\n\r\n', False, 400),
    ('only a method', b'GET\r\n\r\n', False, 400),
    ('half a request line, then closed', b'GET /fibosms/S?guid=', True, 400),
    ('headers cut off, then closed', b'GET / HTTP/1.1\r\nHost: x\r\n', True, 400),
    ('a Content-Length of 5000 digits', b'POST /fibosms/S HTTP/1.1\r\nContent-Length: ' +
     b'9' * 5000 + b'\r\n\r\n', False, 400),
    ('a Content-Length of 5000 zeros', b'POST /fibosms/S HTTP/1.1\r\nContent-Length: ' +
     b'0' * 5000 + b'\r\n\r\n', False, 400),
    ('Arabic-Indic digits as Content-Length', 'POST /fibosms/S HTTP/1.1\r\nContent-Length: '
     '\u0661\u0666\r\n\r\n'.encode('utf-8'), False, 400),
    ('Content-Length twice', b'POST /fibosms/S HTTP/1.1\r\nContent-Length: 3\r\n'
     b'Content-Length: 30\r\n\r\nabc', False, 400),
    ('Content-Type twice', b'GET /fibosms/S HTTP/1.1\r\nContent-Type: a\r\n'
     b'content-type: b\r\n\r\n', False, 400),
    ('Host twice', b'GET /fibosms/S HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', False, 400),
    ('chunked', b'POST /fibosms/S HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
     False, 411),
    ('a request line over 32 KiB', b'GET /?' + b'a' * (33 * 1024), False, 414),
    ('headers over 32 KiB', b'GET / HTTP/1.1\r\nX-A: ' + b'a' * (33 * 1024), False, 431),
    ('51 headers', b'GET / HTTP/1.1\r\n' + b'X-A: b\r\n' * 51 + b'\r\n', False, 431),
]


@pytest.mark.parametrize('data, half_close, code', [r[1:] for r in RAW],
                         ids=[r[0] for r in RAW])
def test_what_the_server_refuses_has_a_status_line_and_a_status_document(plain, data,
                                                                         half_close, code):
    """Every refusal, before or in the app, is a status line and <Status>1</Status>, at once."""
    data = data.replace(b'/fibosms/S', b'/fibosms/' + SECRET.encode())
    began = time.monotonic()
    answer = exchange(plain.port, data, half_close)
    assert_status_document(*answer, expected=code)
    assert time.monotonic() - began < 3
    assert rows(plain.db) == []


def test_a_slow_post_body_without_the_secret_is_refused_before_it_is_read(plain):
    """POST to a wrong path announcing a body it never sends: 403 at once, not a wait."""
    sockets = []
    try:
        for _ in range(3 * smallserver.WORKERS):       # more than all the workers
            sock = socket.create_connection(('127.0.0.1', plain.port), timeout=5)
            sock.sendall(b'POST /fibosms/wrong?guid=b&phone=1 HTTP/1.1\r\nContent-Type: '
                         b'application/x-www-form-urlencoded\r\nContent-Length: 900\r\n\r\nm')
            sockets.append(sock)
        began = time.monotonic()
        for sock in sockets:
            assert_status_document(*read_answer(sock), expected=403)
        assert time.monotonic() - began < 5
    finally:
        for sock in sockets:
            sock.close()
    target = '/fibosms/%s?%s' % (SECRET, query('after'))
    assert_status_document(*get(plain.port, target), expected=200)


# -- Slow and greedy clients --------------------------------------------------------------------

def open_half_sent(port, count, data, source='127.0.0.1'):
    """`count` connections from `source` that each sent `data` and nothing more."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(('127.0.0.1', port), timeout=5,
                                        source_address=(source, 0))
        sock.sendall(data)
        sockets.append(sock)
    return sockets


def test_hundreds_of_half_sent_requests_hold_no_thread_and_time_out(plain):
    """300 half-sent requests, 5 sent a byte at a time and 3 bodies that never come cost no
    thread; a push meanwhile gets 2 at once; each of them gets "try again" (200, 1) after its
    timeout, and
    their file descriptors are closed."""
    target = '/fibosms/%s?%s' % (SECRET, query('warm'))
    assert_status_document(*get(plain.port, target), expected=200)
    threads, fds = threads_and_fds(plain.process.pid)
    head = ('GET /fibosms/%s?%s HTTP/1.1\r\nHost: x\r\n' % (SECRET, query('slow'))).encode()
    began = time.monotonic()
    sockets = open_half_sent(plain.port, 300, head)
    drip = open_half_sent(plain.port, 5, b'G')
    bodies = open_half_sent(plain.port, 3, (
        'POST /fibosms/%s HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n'
        'Content-Length: 500\r\n\r\nguid=b&phone=%s' % (SECRET, PHONE)).encode())
    try:
        time.sleep(0.5)
        now_threads, now_fds = threads_and_fds(plain.process.pid)
        assert now_threads == threads, (threads, now_threads)
        assert fds + 300 <= now_fds <= fds + 308 + 10, (fds, now_fds)
        pushed = time.monotonic()
        target = '/fibosms/%s?%s' % (SECRET, query('meanwhile'))
        assert_status_document(*get(plain.port, target), expected=200)
        assert time.monotonic() - pushed < 2
        # The drip feeders send a byte every 0.2 s: the deadline is for all the headers.
        dripped, answers = b'ET / HTTP/1.1\r\nX-Slow: ' + b'a' * 1000, {}
        for n in range(int((smallserver.HEADER_TIMEOUT + 3) / 0.2)):
            waiting = [sock for sock in drip if sock not in answers]
            if not waiting:
                break
            for sock in waiting:
                try:
                    sock.send(dripped[n:n + 1])
                except OSError:    # answered and closed
                    pass
            for sock in select.select(waiting, [], [], 0.2)[0]:
                answers[sock] = read_answer(sock)
        assert len(answers) == len(drip)
        waited = time.monotonic() - began
        assert smallserver.HEADER_TIMEOUT - 1 < waited < smallserver.HEADER_TIMEOUT + 3, waited
        for answer in answers.values():
            assert_status_document(*answer, expected=TRY_AGAIN)
        for sock in sockets + bodies:
            sock.settimeout(smallserver.BODY_TIMEOUT + 5)
            assert_status_document(*read_answer(sock), expected=TRY_AGAIN)
        assert time.monotonic() - began < smallserver.BODY_TIMEOUT + 3
    finally:
        for sock in sockets + drip + bodies:
            sock.close()
    deadline = time.monotonic() + 5
    # A second worker may now keep a database connection open: its file, -wal and -shm.
    while threads_and_fds(plain.process.pid)[1] > fds + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    now_threads, now_fds = threads_and_fds(plain.process.pid)
    assert now_threads == threads and now_fds <= fds + 3, (threads, fds, now_threads, now_fds)
    assert [r['guid'] for r in rows(plain.db)] == ['warm', 'meanwhile']
    log = plain.log()
    assert log.count('answered 1 (HTTP 200): headers not in within') == 305, log[-2000:]
    assert log.count('answered 1 (HTTP 200): body not received') == 3, log[-2000:]


def test_connections_over_the_limit_get_try_again_at_once(plain):
    """Past MAX_CONNECTIONS open at once, the next ones get try again at once and close; when the
    crowd leaves, a push gets 2."""
    _, fds = threads_and_fds(plain.process.pid)
    crowd = open_half_sent(plain.port, smallserver.MAX_CONNECTIONS, b'GET / HTTP/1.1\r\n')
    try:
        time.sleep(0.3)
        began = time.monotonic()
        for _ in range(20):
            sock = socket.create_connection(('127.0.0.1', plain.port), timeout=5)
            try:
                assert_status_document(*read_answer(sock), expected=TRY_AGAIN)
            finally:
                sock.close()
        assert time.monotonic() - began < 5
        assert threads_and_fds(plain.process.pid)[1] <= fds + smallserver.MAX_CONNECTIONS + 2
    finally:
        for sock in crowd:
            sock.close()
    time.sleep(0.5)
    target = '/fibosms/%s?%s' % (SECRET, query('after-crowd'))
    assert_status_document(*get(plain.port, target), expected=200)
    assert plain.log().count('answered 1 (HTTP 200): more than %d connections'
                            % smallserver.MAX_CONNECTIONS) == 20


def test_one_address_cannot_take_every_connection(plain):
    """A client holding MAX_PER_ADDRESS idle connections gets 503 for more, at once; a push
    from another address (here 127.0.0.3, the gateway) still gets 2 meanwhile."""
    crowd = open_half_sent(plain.port, smallserver.MAX_PER_ADDRESS, b'GET / HTTP/1.1\r\n',
                           source='127.0.0.2')
    try:
        time.sleep(0.3)
        for _ in range(5):
            sock = socket.create_connection(('127.0.0.1', plain.port), timeout=5,
                                            source_address=('127.0.0.2', 0))
            try:
                assert_status_document(*read_answer(sock), expected=TRY_AGAIN)
            finally:
                sock.close()
        sock = socket.create_connection(('127.0.0.1', plain.port), timeout=5,
                                        source_address=('127.0.0.3', 0))
        try:
            sock.sendall(('GET /fibosms/%s?%s HTTP/1.1\r\nHost: x\r\n\r\n'
                          % (SECRET, query('other-address'))).encode())
            assert_status_document(*read_answer(sock), expected=200)
        finally:
            sock.close()
    finally:
        for sock in crowd:
            sock.close()
    assert plain.log().count('answered 1 (HTTP 200): more than %d connections from one address'
                             % smallserver.MAX_PER_ADDRESS) == 5


def test_connections_sending_huge_headers_slowly_hold_little_memory(plain):
    """150 connections each holding 31 KiB of unfinished headers cost at most 2x that in
    memory; more than MAX_HEADER_BYTES is 431 at once."""
    before = rss_kib(plain.process.pid)
    chunk = b'X-Big: ' + b'a' * 1000 + b'\r\n'
    sockets = open_half_sent(plain.port, 150, b'GET / HTTP/1.1\r\n')
    try:
        for _ in range(31):
            for sock in sockets:
                sock.sendall(chunk)
        time.sleep(0.5)
        grown = rss_kib(plain.process.pid) - before
        assert grown < 2 * 150 * 32, grown
        for sock in sockets[:10]:
            sock.sendall(chunk * 3)
            assert_status_document(*read_answer(sock), expected=431)
    finally:
        for sock in sockets:
            sock.close()
