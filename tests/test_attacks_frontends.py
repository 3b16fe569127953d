"""The shipped front ends under attack: deploy/apache-mod_wsgi.conf, deploy/cgi/ (mod_cgid),
deploy/apache-passenger.conf, deploy/apache-reverse-proxy.conf and
deploy/nginx-reverse-proxy.conf on the real servers of support.py, attacked with raw bytes
over real sockets as the internet would.

Every answer must be a Status document (text/xml; charset=utf-8), whoever gives it: the page
or the front end refusing by itself (too long, unreadable, too big, too slow, the receiver
down). Nothing forged may be stored. No log file the set-up writes (every file in the
workspace's log folder) may hold the secret, the phone number or the text of a push; the
one exception is the shared host's access log of the CGI set-up (other_vhosts_access.log), which
records whole URLs and which README names as such.

Every Apache set-up runs with a DocumentRoot that is not granted, the case in which Apache's
PATH_TRANSLATED lookup used to log the secret (AH01630). Slow clients are few (SLOW_CLIENTS),
each test stops by itself within SLOW_BOUND seconds, and every socket is closed at its end.
"""
import http.client
import io
import os
import pwd
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
import uuid

import pytest

import support
from support import TOKEN, assert_status_document, read_response, request_bytes

from support import CONTENT_TYPE, DONE, RETRY
SLOW_CLIENTS = 3           # connections per slow-client test
SLOW_BOUND = 40.0          # seconds within which a front end must drop a slow client
APP_QUERY_LIMIT = 16 * 1024
FRONTS = ['mod_wsgi', 'cgi', 'passenger', 'apache_proxy', 'nginx']
PROXIES = ['apache_proxy', 'nginx']
# The CGI set-up is an .htaccess on a host that is not ours: its request-line limit and
# client timeouts are the host's (README says so), so those tests run on the others.
OWN_SERVER = ['mod_wsgi', 'passenger', 'apache_proxy', 'nginx']


# -- The set-ups ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def fronts():
    """fronts(name) -> that set-up (support.start), started at its first use and stopped after
    the module. Every Apache set-up runs with a DocumentRoot that is not granted."""
    started = {}

    def get(name):
        if name not in started:
            started[name] = support.start(name)
        front = started[name]
        front.since = front.mark()
        return front
    try:
        yield get
    finally:
        for front in started.values():
            front.stop()


def exchange(front, data, timeout=20.0, source=None):
    """Send `data` to the set-up (TLS when it serves TLS): support.exchange's Response."""
    return support.exchange(front.port, data, front.cafile, timeout, source)


def connect(front, timeout=20.0, source=None):
    return support.connect(front.port, front.cafile, timeout, source)


def push_target(path, phone, message, guid):
    """`path` with a push's query string, encoded as the gateway does."""
    return '%s?%s' % (path, support.push_query(message, phone, guid))


# -- What every answer and every log must be --------------------------------------------------

def assert_logs_clean(front, *secrets):
    """No log file of the set-up holds the secret or any of `secrets` (phones, text) in any
    of the forms they take: a phone also without its country code, the secret also with its
    first characters percent-encoded."""
    time.sleep(0.1)      # written before the front end closes; the receiver, maybe not yet
    forms = [TOKEN, TOKEN[4:]]
    for secret in secrets:
        forms += [secret, secret[2:]] if secret.startswith('84') else [secret]
    for name, text in front.logs(since=front.since).items():
        for secret in forms:
            lines = [line[:400] for line in text.splitlines() if secret in line]
            assert not lines, '%s holds %r:\n%s' % (name, secret, '\n'.join(lines))


def stored(front, guid):
    """The rows stored for `guid` ([] while no push has made the database)."""
    return support.stored(front.db, guid)


def new_phone():
    """A phone number no other test uses: found in a log, it names the test that leaked it."""
    return '849%08d' % (uuid.uuid4().int % 10 ** 8)


def marker():
    """An ASCII word inside each message: the same in the query, encoded or not."""
    return 'zq' + support.new_guid().replace('-', '')[-12:]


# -- Long pushes: what the app takes, the front end takes -------------------------------------

def long_query(phone, word, guid, total):
    """A push whose query string is `total` bytes at most, its message a long Vietnamese SMS
    in %uXXXX form, as the gateway sends it."""
    head = 'message=%s+' % word
    tail = '&phone=%s&guid=%s' % (phone, guid)
    units = (total - len(head) - len(tail)) // 6
    return head + '%u1EA1' * units + tail


@pytest.mark.parametrize('name', OWN_SERVER)
def test_attack_front_takes_a_16_kib_query(fronts, name):
    """A push whose query string is the app's 16 KiB limit is stored: no 414 of the front's."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    query = long_query(phone, word, guid, APP_QUERY_LIMIT)
    assert APP_QUERY_LIMIT - 6 < len(query) <= APP_QUERY_LIMIT
    response = exchange(front, request_bytes(front.page + '?' + query))
    assert_status_document(response, DONE, codes=[200])
    [row] = stored(front, guid)
    assert row['message'].startswith(word + ' \u1ea1') and row['phone'].endswith(phone[3:])
    assert_logs_clean(front, phone, word)


@pytest.mark.parametrize('name', OWN_SERVER)
@pytest.mark.parametrize('total', [APP_QUERY_LIMIT + 2000, 30 * 1024, 200 * 1024])
def test_attack_front_too_long_query_gets_status(fronts, name, total):
    """Over 16 KiB: 414 as a Status document, whether the page or the front end refuses."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    query = long_query(phone, word, guid, total)
    response = exchange(front, request_bytes(front.page + '?' + query))
    assert_status_document(response, codes=[414])
    assert stored(front, guid) == []
    assert_logs_clean(front, phone, word)


# -- Other spellings of the page's path -------------------------------------------------------

RESPELLINGS = [
    lambda p: p.replace('/fibosms/', '/%66ibosms/', 1),
    lambda p: p.replace('/fibosms/', '/./fibosms/', 1),
    lambda p: p.replace('/fibosms/', '//fibosms/', 1),
    lambda p: p.replace('/fibosms/', '/fibosms/./', 1),
    lambda p: p.replace('/fibosms/', '/fibosms//', 1),
    lambda p: p.replace('/fibosms/', '/x/../fibosms/', 1),
    lambda p: p.replace('/fibosms/', '/%2e/fibosms/', 1),
    lambda p: p.replace('/fibosms/', '/fibosms%2f', 1),
    lambda p: p.replace('/fibosms/', '/FIBOSMS/', 1),
    lambda p: p.replace('receiver.cgi', '%72eceiver.cgi', 1),
    lambda p: p + '/',
    lambda p: p + '/%zz',
    lambda p: p + '/../' + TOKEN,
]


RESPELLING_IDS = [
    'percent', 'dot', 'double-slash', 'inner-dot', 'inner-double-slash', 'dot-dot',
    'percent-dot', 'encoded-slash', 'upper-case', 'percent-script', 'trailing-slash',
    'bad-escape', 'dot-dot-after']
# On shared hosting a path that does not reach the uploaded folder, or that Apache cannot
# decode, is answered and logged by the host before any .htaccess is read.
CGI_HOST_SPELLINGS = ('encoded-slash', 'upper-case', 'bad-escape')


@pytest.mark.parametrize('name,spell', [
    pytest.param(name, spell, id='%s-%s' % (name, spell_id))
    for name in FRONTS for spell, spell_id in zip(RESPELLINGS, RESPELLING_IDS)
    if (name != 'cgi' or spell_id not in CGI_HOST_SPELLINGS)
    and (name == 'cgi' or spell_id != 'percent-script')])
def test_attack_front_respelled_path_answered_and_not_logged(fronts, name, spell):
    """Another spelling of the page's path, with the secret in it, gets a Status document
    (stored or refused) and lands in no log, access or error."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    target = push_target(spell(front.page), phone, 'Xin chào %s' % word, guid)
    response = exchange(front, request_bytes(target))
    assert response is not None, target
    assert response.body in (DONE, RETRY), (target, response)
    assert response.headers['Content-Type'] == CONTENT_TYPE, (target, response.headers)
    assert len(stored(front, guid)) == (response.body == DONE)
    assert_logs_clean(front, phone, word)


@pytest.mark.parametrize('name', FRONTS)
def test_attack_front_path_translated_lookup_logs_no_secret(fronts, name):
    """A push through a vhost whose DocumentRoot is not granted logs no AH01630 (the
    PATH_TRANSLATED lookup of the secret under DocumentRoot)."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    response = exchange(front, request_bytes(push_target(front.page, phone, word, guid)))
    assert_status_document(response, DONE, codes=[200])
    assert_logs_clean(front, phone, word)
    for name, text in front.logs(since=front.since).items():
        assert 'AH01630' not in text, (name, text)


# -- Requests the front end refuses by itself -------------------------------------------------

def refusals(page, phone, word, guid):
    """(name, raw request) pairs each front end must refuse with a Status document."""
    target = push_target(page, phone, word, guid)
    return [
        ('bad-version', request_bytes(target).replace(b'HTTP/1.1', b'HTTP/9.9', 1)),
        ('no-version', ('GET %s\r\n\r\n' % target).encode()),
        ('garbage-method', request_bytes(target, method='G<T')),
        ('unknown-method', request_bytes(target, method='BREW')),
        ('huge-header', request_bytes(target, headers=[('X-Big', 'a' * 70000)])),
        ('many-headers', request_bytes(target, headers=[('X-H%d' % i, 'v') for i in range(300)])),
        ('huge-body', request_bytes(target, method='POST', body=b'message=x&' * 10000,
                                  headers=[('Content-Type',
                                            'application/x-www-form-urlencoded')])),
        ('bad-host', request_bytes(target, headers=[('Host', 'a b')]).replace(
            b'Host: 127.0.0.1\r\n', b'', 1)),
        ('two-lengths', request_bytes(target, method='POST', headers=[
            ('Content-Length', '5'), ('Content-Length', '7')])),
        ('chunked-garbage', request_bytes(target, method='POST', headers=[
            ('Transfer-Encoding', 'chunked')]) + b'zz\r\nhello\r\n'),
    ]


# What the host refuses before it reads an .htaccess is the host's page, not the CGI set-up's.
CGI_REFUSALS = ('unknown-method', 'huge-body')


@pytest.mark.parametrize('name,case', [
    (name, case) for name in FRONTS for case, _ in refusals('/', '1', 'w', 'g')
    if name != 'cgi' or case in CGI_REFUSALS])
def test_attack_front_refusal_is_status_document(fronts, name, case):
    """A malformed or oversized request gets a Status document (or, for one without an HTTP
    version, nothing at all), is stored once at most and logs no secret."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    data = dict(refusals(front.page, phone, word, guid))[case]
    response = exchange(front, data)
    if case == 'no-version' and (response is None or response.status is None):
        # A request line without a version is HTTP/0.9: no status line, no headers; what
        # there is must still be one of the two documents.
        assert response is None or response.body in (DONE, RETRY), response
    elif response is not None and response.body == DONE:   # served after all, and stored once
        assert_status_document(response, DONE, codes=[200])
    else:
        assert_status_document(response)
        assert 400 <= response.status < 600, response
    assert len(stored(front, guid)) == (response is not None
                                                   and response.body == DONE)
    assert_logs_clean(front, phone, word)


@pytest.mark.parametrize('name', ['mod_wsgi', 'passenger', 'apache_proxy', 'nginx'])
def test_attack_front_plain_http_to_tls_port_gets_status(fronts, name):
    """Plain HTTP sent to the TLS port gets a Status document (400, or nginx's 497), not the
    server's HTML page, and leaves no secret in a log."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    sock = socket.create_connection(('127.0.0.1', front.port), timeout=20)
    try:
        sock.sendall(request_bytes(push_target(front.page, phone, word, guid)))
        response = read_response(sock)
    finally:
        sock.close()
    assert_status_document(response, codes=[400, 497])
    assert stored(front, guid) == []
    assert_logs_clean(front, phone, word)


# -- The receiver down (a restart window) -----------------------------------------------------

@pytest.mark.parametrize('name', PROXIES)
def test_attack_front_receiver_down_answers_status(fronts, name):
    """With the receiver stopped, a push gets a Status document, 200 from nginx (try again),
    503 from Apache, which can give its own refusals no other code; the front end's logs hold
    neither secret nor push; the receiver back, the gateway's resend is stored."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    target = push_target(front.page, phone, 'Xin chào %s' % word, guid)
    front.receiver.stop()       # its socket too, as a stopped systemd unit's
    try:
        for _ in range(3):
            response = exchange(front, request_bytes(target))
            assert_status_document(response, codes=[200] if name == 'nginx' else [503])
    finally:
        front.receiver.start()
    assert_logs_clean(front, phone, word)
    response = exchange(front, request_bytes(target))
    assert_status_document(response, DONE, codes=[200])
    assert len(stored(front, guid)) == 1


@pytest.mark.parametrize('name', PROXIES)
def test_attack_front_receiver_hung_answers_status(fronts, name):
    """With the receiver stopped dead (SIGSTOP: connections are accepted, never answered), a
    push gets a Status document once the proxy's timeout (30 s) runs out, and leaves nothing
    in a log; the resend is stored once."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    target = push_target(front.page, phone, 'Xin chào %s' % word, guid)
    front.receiver.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = exchange(front, request_bytes(target), timeout=60)
        waited = time.monotonic() - started
    finally:
        front.receiver.process.send_signal(signal.SIGCONT)
    assert_status_document(response, codes=[200] if name == 'nginx' else [502, 503, 504])
    assert 25 < waited < 45, waited
    # Woken, the receiver may still store the push it had accepted: the gateway's resend is
    # then answered 2 and leaves one row.
    response = exchange(front, request_bytes(target))
    assert_status_document(response, DONE, codes=[200])
    assert len(stored(front, guid)) == 1
    assert_logs_clean(front, phone, word)


# -- Forged headers ---------------------------------------------------------------------------

FORGED_HEADERS = [
    # The caller's own X-Forwarded-For first: Apache appends the real address to it in place,
    # so a spelling with underscores sent after it comes last, where the receiver looks.
    [('X-Forwarded-For', '203.0.113.8'), ('X_Forwarded_For', '203.0.113.7')],
    [('X-Forwarded-For', '203.0.113.8'), ('x_forwarded_for', '203.0.113.7')],
    [('X-Forwarded-For', '203.0.113.8'), ('X-Forwarded_For', '203.0.113.7')],
    [('X-Forwarded-For', '203.0.113.8'), ('X_Forwarded-For', '203.0.113.7')],
    [('X_Forwarded_For', '203.0.113.7')],
    [('X-Forwarded-For', '203.0.113.8')],
    [('X-Forwarded-For', '203.0.113.8'), ('X-Forwarded-For', '203.0.113.7')],
    [('X-Real-IP', '203.0.113.7'), ('Forwarded', 'for=203.0.113.7')],
]


@pytest.mark.parametrize('name', FRONTS)
@pytest.mark.parametrize('headers', FORGED_HEADERS, ids=[
    'after-real', 'lower-case', 'one-underscore', 'other-underscore', 'alone', 'hyphens',
    'twice', 'other-names'])
def test_attack_front_forged_forwarded_for_not_believed(fronts, name, headers):
    """A caller's own X-Forwarded-For, in any spelling and order, is not the address
    stored: the caller's real one (127.0.0.2) is."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    data = request_bytes(push_target(front.page, phone, word, guid), headers=headers)
    response = exchange(front, data, source='127.0.0.2')
    assert_status_document(response, DONE, codes=[200])
    [row] = stored(front, guid)
    assert row['remote_addr'] == '127.0.0.2', row['remote_addr']
    assert_logs_clean(front, phone, word)


# -- Slow clients -----------------------------------------------------------------------------

def slow_client(front, first, trickle, results, index, deadline):
    """Send `first` at once, then `trickle` a byte a second until the server answers or
    closes the connection, or `deadline` passes; results[index] = the answer: a Response,
    None (closed without one) or 'still open'."""
    import select
    sock = connect(front, timeout=5.0)
    try:
        sock.sendall(first)
        for byte in trickle:
            if time.monotonic() > deadline:
                results[index] = 'still open'
                return
            if select.select([sock], [], [], 1.0)[0]:
                break               # an answer, or the end of the connection
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        sock.settimeout(5.0)
        try:
            results[index] = read_response(sock)
        except (OSError, http.client.HTTPException):
            results[index] = None
    finally:
        sock.close()


@pytest.mark.parametrize('part', ['headers', 'body'])
@pytest.mark.parametrize('name', OWN_SERVER)
def test_attack_front_slow_clients_dropped_and_pushes_go_on(fronts, name, part):
    """A few clients sending their headers (or a POST body) a byte a second neither delay
    a real push nor stay connected past SLOW_BOUND; what they get is a Status document."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    target = push_target(front.page, phone, word, support.new_guid())
    if part == 'headers':
        first = ('GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n' % target).encode()
        trickle = b'X-Slow: ' + b'a' * 200
    else:
        body = support.push_query(word, phone, support.new_guid()).encode()
        first = request_bytes(front.page, method='POST', headers=[
            ('Content-Type', 'application/x-www-form-urlencoded'),
            ('Content-Length', str(len(body) + 200))])
        trickle = body + b'x' * 200
    deadline = time.monotonic() + SLOW_BOUND
    results = ['no result'] * SLOW_CLIENTS
    threads = [threading.Thread(target=slow_client,
                                args=(front, first, trickle, results, i, deadline))
               for i in range(SLOW_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        before = time.monotonic()
        real = exchange(front, request_bytes(push_target(front.page, phone, word, guid)))
        assert time.monotonic() - before < 10, 'a real push waited behind slow clients'
        assert_status_document(real, DONE, codes=[200])
    finally:
        for thread in threads:
            thread.join(SLOW_BOUND + 10)
    for answer in results:
        assert answer != 'no result'
        if (name, part) == ('nginx', 'body'):
            # nginx has no minimum rate for a body, only a time between two reads, and keeps
            # a client sending a byte a second; it buffers the body before it calls the
            # receiver, so the receiver's threads are not held (the push above got through).
            continue
        assert answer != 'still open', 'a slow client was held for %g s' % SLOW_BOUND
        if answer is not None:      # dropped, or answered 408 as a Status document
            assert_status_document(answer, codes=[400, 408, 413])
    assert_logs_clean(front, phone, word)


# -- Requests for less or other than the page, and the server's own pages ---------------------

@pytest.mark.parametrize('name', FRONTS)
@pytest.mark.parametrize('headers', [
    [('Range', 'bytes=0-4')], [('Range', 'bytes=500-600')],
    [('Range', 'bytes=0-4'), ('If-Range', 'Wed, 21 Oct 2015 07:28:00 GMT')],
], ids=['first-bytes', 'past-the-end', 'if-range'])
def test_attack_front_range_gets_the_whole_document(fronts, name, headers):
    """A push with a Range header is answered with the whole document, not 206 and a piece
    of it ("<Stat") nor a 416 HTML page; the push is stored."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    response = exchange(front, request_bytes(push_target(front.page, phone, word, guid),
                                             headers=headers))
    assert_status_document(response, DONE, codes=[200])
    assert len(stored(front, guid)) == 1
    assert_logs_clean(front, phone, word)


@pytest.mark.parametrize('name', OWN_SERVER)
def test_attack_front_options_asterisk_is_a_status_document(fronts, name):
    """"OPTIONS *", which Apache's core would answer with an empty 200, gets a Status
    document. (Under CGI the host answers it: the .htaccess is never read.)"""
    front = fronts(name)
    response = exchange(front, request_bytes('*', method='OPTIONS'))
    assert_status_document(response)
    assert 400 <= response.status < 500, response


@pytest.mark.parametrize('name,confs', [(name, 'debian') for name in OWN_SERVER] + [
    (name, 'without-security-conf') for name in OWN_SERVER if name != 'nginx'])
def test_attack_front_trace_echoes_nothing(name, confs):
    """TRACE is refused with a Status document and echoes nothing back, on Debian's confs
    and on a server without security.conf's TraceEnable Off (Apache's own default is On, as
    on CentOS)."""
    options = {} if name == 'nginx' or confs == 'debian' else {'confs': tuple(
        conf for conf in support.DEBIAN_CONFS if conf != 'security')}
    front = support.start(name, **options)
    try:
        front.since = front.mark()
        phone, word, guid = new_phone(), marker(), support.new_guid()
        response = exchange(front, request_bytes(push_target(front.page, phone, word, guid),
                                                 method='TRACE'))
        assert_status_document(response)
        assert response.status in (403, 405), response
        assert stored(front, guid) == []
        assert_logs_clean(front, phone, word)
    finally:
        front.stop()


@pytest.mark.parametrize('name', ['mod_wsgi', 'passenger', 'apache_proxy'])
@pytest.mark.parametrize('page', ['/server-status', '/server-status?notable', '/server-status?auto'])
def test_attack_front_server_status_shows_no_request_line(fronts, name, page):
    """Debian's mod_status (status.conf: /server-status for this machine, ExtendedStatus On)
    shows another local user (127.0.0.2) no push: neither the secret nor its text."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    response = exchange(front, request_bytes(push_target(front.page, phone, word, guid)))
    assert_status_document(response, DONE, codes=[200])
    status = exchange(front, request_bytes(page), source='127.0.0.2')
    assert status.status == 200 and b'Apache' in status.body, status     # the page is there
    for secret in (TOKEN, TOKEN[4:], word, phone[2:]):
        assert secret.encode() not in status.body, (secret, status.body[:3000])


def post_expecting_continue(front, phone, word, guid, wait=1.0):
    """A POST push as .NET's HttpWebRequest sends it: headers with Expect: 100-continue, then
    the body once "100 Continue" came or after `wait` seconds: (first bytes, Response)."""
    body = ('guid=%s&phone=%s&message=%s' % (guid, phone, word)).encode()
    head = request_bytes(front.page, method='POST', headers=[
        ('Content-Type', 'application/x-www-form-urlencoded'),
        ('Content-Length', str(len(body))), ('Expect', '100-continue')])
    sock = connect(front, timeout=wait)
    try:
        sock.sendall(head)
        try:
            first = sock.recv(4096)
        except socket.timeout:
            first = b''
        sock.settimeout(15)
        sock.sendall(body)
        return first, read_response(sock, first.partition(b'\r\n\r\n')[2]
                                    if first.startswith(b'HTTP/1.1 100') else first)
    finally:
        sock.close()


@pytest.mark.parametrize('name', FRONTS + ['small_server'])
def test_attack_front_post_with_expect_100_continue_is_stored(fronts, name):
    """A POST with Expect: 100-continue (.NET's default) is answered 100 Continue and stored,
    at once: not left waiting for a 100 that never comes (Apache's mod_proxy_http passes the
    header on and waits for the receiver's)."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    started = time.monotonic()
    first, response = post_expecting_continue(front, phone, word, guid)
    assert first.startswith(b'HTTP/1.1 100 Continue\r\n'), first
    assert_status_document(response, DONE, codes=[200])
    assert time.monotonic() - started < 3
    assert len(stored(front, guid)) == 1
    assert_logs_clean(front, phone, word)


@pytest.mark.parametrize('path', ['/SECRET/x', '/SECRET/x/y/z', '/x/SECRET/', '/a/b/c/SECRET',
                                  '//SECRET', '/SECRET//'])
def test_attack_front_cgi_any_path_after_the_script_logs_no_secret(fronts, path):
    """Whatever path follows receiver.cgi, Apache's PATH_TRANSLATED lookup stays in the
    uploaded folder: no AH01630 naming the secret in the host's error log."""
    front = fronts('cgi')
    phone, word, guid = new_phone(), marker(), support.new_guid()
    target = '/fibosms/receiver.cgi' + path.replace('SECRET', TOKEN)
    response = exchange(front, request_bytes(push_target(target, phone, word, guid)))
    assert_status_document(response, DONE if path.rstrip('/').endswith('SECRET') else RETRY)
    assert_logs_clean(front, phone, word)
    for log, text in front.logs(since=front.since).items():
        assert 'AH01630' not in text, (log, text)


def test_attack_front_nginx_out_of_connections_is_try_again_and_logs_nothing(fronts):
    """With worker_connections (64 on the test host) all but used up by clients that sent
    half a request, so that nginx takes the push but has no connection left to pass it on, it
    is answered "try again" (HTTP 200, <Status>1</Status>), not a 500, and nginx's alert
    about it, which quotes the request line, is in no log."""
    front = fronts('nginx')
    held = []
    try:
        for _ in range(61):     # (nginx closes connections still in their TLS handshake)
            sock = connect(front, timeout=10)
            sock.sendall(b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n')
            held.append(sock)
        time.sleep(0.3)
        phone, word, guid = new_phone(), marker(), support.new_guid()
        response = exchange(front, request_bytes(push_target(front.page, phone, word, guid)))
        assert_status_document(response, RETRY, codes=[200])
        assert stored(front, guid) == []
        assert_logs_clean(front, phone, word)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    guid, response = front.push()
    assert_status_document(response, DONE, codes=[200])


def tls_request_then_bad_record(front, data):
    """A TLS connection that sends `data` (an unfinished request), then a record that fails
    to decrypt: what it got back before the server closed it."""
    raw = socket.create_connection(('127.0.0.1', front.port), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context(cafile=front.cafile).wrap_bio(
        incoming, outgoing, server_hostname='127.0.0.1')
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(data)
        raw.sendall(outgoing.read())
        time.sleep(0.3)
        raw.sendall(b'\x17\x03\x03\x00\x20' + os.urandom(32))
        answer = b''
        while True:
            try:
                chunk = raw.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        return answer
    finally:
        raw.close()


@pytest.mark.parametrize('name', OWN_SERVER)
def test_attack_front_bad_tls_record_after_an_unfinished_request_logs_nothing(fronts, name):
    """A record that fails to decrypt after the request line of a push (nginx logs that at
    [crit], request line and all) leaves no log holding the secret or the text."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    data = request_bytes(push_target(front.page, phone, word, guid))
    tls_request_then_bad_record(front, data[:data.index(b'\r\n') + 2])
    assert stored(front, guid) == []
    assert_logs_clean(front, phone, word)


CONNECT_AS_NOBODY = """
import socket, sys
refused = 0
for _ in range(520):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(sys.argv[1])
    except PermissionError:
        refused += 1
print(refused)
"""


@pytest.mark.parametrize('name', PROXIES)
def test_attack_front_another_local_user_cannot_reach_the_receiver(fronts, name):
    """The receiver listens on fibosms-receiver.socket's socket, which only the front end's
    user may open: another local user's 520 connections (enough, from 127.0.0.1 on TCP, to
    take all 512 of the small server's) are each refused, and the push goes through."""
    front = fronts(name)
    nobody = pwd.getpwnam('nobody')

    def as_nobody():
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
    done = subprocess.run(
        [support.SYSTEM_PYTHON, '-c', CONNECT_AS_NOBODY, front.receiver.socket_path],
        preexec_fn=as_nobody, stdout=subprocess.PIPE, timeout=60, check=True)
    assert done.stdout.strip() == b'520'
    guid, response = front.push()
    assert_status_document(response, DONE, codes=[200])


@pytest.mark.parametrize('name', PROXIES)
def test_attack_front_push_during_a_receiver_restart_is_stored(fronts, name):
    """A push that comes while the receiver restarts (systemd keeps the socket open) waits
    in the socket's queue and is answered 2 by the new process, within a second or two."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), support.new_guid()
    front.receiver.stop_process()
    answers = []
    sender = threading.Thread(target=lambda: answers.append(exchange(
        front, request_bytes(push_target(front.page, phone, word, guid)), timeout=40)))
    try:
        sender.start()
        time.sleep(1.0)
    finally:
        started = time.monotonic()
        front.receiver.start()
    sender.join(40)
    assert_status_document(answers[0], DONE, codes=[200])
    assert time.monotonic() - started < 5
    assert len(stored(front, guid)) == 1
    assert_logs_clean(front, phone, word)
