"""The shipped front ends under attack: deploy/apache-mod_wsgi.conf, deploy/cgi/ (mod_cgid),
deploy/apache-passenger.conf, deploy/apache-reverse-proxy.conf and
deploy/nginx-reverse-proxy.conf on the real servers of servers.py, attacked with raw bytes
over real sockets as the internet would.

Every answer must be a Status document (text/xml; charset=utf-8), whoever gives it: the page
or the front end refusing by itself (too long, unreadable, too big, too slow, the receiver
down). Nothing forged may be stored. No log file the set-up writes (every file in the
workspace's log folder) may hold the secret, the phone number or the text of a push; the
one exception is the shared host's access log of the CGI set-up (host_access.log), which
records whole URLs and which README names as such.

Every Apache set-up runs with a DocumentRoot that is not granted, the case in which Apache's
PATH_TRANSLATED lookup used to log the secret (AH01630). Slow clients are few (SLOW_CLIENTS),
each test stops by itself within SLOW_BOUND seconds, and every socket is closed at its end.
"""
import http.client
import io
import os
import signal
import socket
import sqlite3
import ssl
import threading
import time
import uuid

import pytest

import servers
from servers import TOKEN

RETRY = b'<Status>1</Status>'
DONE = b'<Status>2</Status>'
CONTENT_TYPE = 'text/xml; charset=utf-8'
SLOW_CLIENTS = 3           # connections per slow-client test
SLOW_BOUND = 40.0          # seconds within which a front end must drop a slow client
APP_QUERY_LIMIT = 16 * 1024
FRONTS = ['mod_wsgi', 'cgi', 'passenger', 'apache_proxy', 'nginx']
PROXIES = ['apache_proxy', 'nginx']
# The CGI set-up is an .htaccess on a host that is not ours: its request-line limit and
# client timeouts are the host's (README says so), so those tests run on the others.
OWN_SERVER = ['mod_wsgi', 'passenger', 'apache_proxy', 'nginx']


# -- The set-ups ------------------------------------------------------------------------------

class Front:
    """One running set-up: where to connect, the page's path, its database and logs."""

    def __init__(self, name, ws, port, page, tls, receiver=None, host_logs=()):
        self.name, self.ws, self.port, self.page = name, ws, port, page
        self.cafile = ws.cert if tls else None
        self.db, self.receiver = ws.db, receiver
        self.host_logs = set(host_logs)   # log files written by the host, not by the snippet
        self.servers = []                 # stopped in reverse order
        self.since = None                 # mark() at the start of the current test

    def logs(self, since=None):
        """{file name: text} of every log file the set-up writes, from the offsets in
        `since` (a mark()) on: each test then answers for its own lines only."""
        texts = {}
        for name in sorted(os.listdir(self.ws.logs)):
            if name not in self.host_logs:
                texts[name] = self.ws.log(name)[(since or {}).get(name, 0):]
        return texts

    def mark(self):
        """The current length of every log, for logs(since=...)."""
        return {name: len(text) for name, text in self.logs().items()}


def grant(folder):
    return '<Directory %s>\n    Require all granted\n</Directory>\n' % folder


def start_mod_wsgi(ws):
    config = servers.mod_wsgi_config(ws)   # the DocumentRoot not granted
    apache = servers.Apache(ws, ['wsgi', 'headers', 'reqtimeout'], config).start()
    front = Front('mod_wsgi', ws, apache.port, '/fibosms/' + TOKEN, tls=True)
    front.servers = [apache]
    return front


def start_cgi(ws):
    """deploy/cgi/ uploaded to a folder the host serves at /fibosms (an Alias, as for a
    user's folder), with the host's DocumentRoot not granted."""
    folder = ws.folder('site', 'fibosms')
    ws.copy(os.path.join(servers.DEPLOY, 'cgi', '.htaccess'),
            os.path.join(folder, '.htaccess'), 0o644)
    ws.write(os.path.join(folder, 'receiver.cgi'), servers.cgi_script(ws.app, ws.db), mode=0o755)
    host = ('ScriptSock %s/cgid.sock\nDocumentRoot %s\nAlias /fibosms %s\n<Directory %s>\n'
            '    Options SymLinksIfOwnerMatch\n    AllowOverride All\n'
            '    Require all granted\n</Directory>\n' % (ws.run, ws.www, folder, folder))
    apache = servers.Apache(ws, ['cgid', 'headers', 'rewrite'], host).start()
    front = Front('cgi', ws, apache.port, '/fibosms/receiver.cgi/' + TOKEN, tls=False,
                  host_logs=['host_access.log'])
    front.servers = [apache]
    return front


def start_apache_proxy(ws):
    receiver = servers.Receiver(ws).start()
    config = servers.snippet('apache-reverse-proxy.conf', servers.tls_replacements(ws) + [
        ('<VirtualHost *:443>', '<VirtualHost *:{port}>'),
        ('DocumentRoot /var/www/html', 'DocumentRoot %s' % ws.www),
        ('127.0.0.1:8000', '127.0.0.1:%d' % receiver.port),
    ])
    apache = servers.Apache(ws, ['proxy', 'proxy_http', 'headers', 'reqtimeout'], config)
    front = Front('apache_proxy', ws, apache.port, '/fibosms/' + TOKEN, tls=True,
                  receiver=receiver)
    front.servers = [receiver, start_or_stop(apache, receiver)]
    return front


def start_nginx(ws):
    receiver = servers.Receiver(ws).start()
    config = servers.snippet('nginx-reverse-proxy.conf', servers.tls_replacements(ws) + [
        ('listen 443 ssl;', 'listen 127.0.0.1:{port} ssl;'),
        ('listen [::]:443 ssl;', '# (IPv6 listen line dropped: loopback only here)'),
        ('root /var/www/html;', 'root %s;' % ws.www),
        ('/var/log/nginx/', ws.logs + '/'),
        ('127.0.0.1:8000', '127.0.0.1:%d' % receiver.port),
    ])
    nginx = servers.Nginx(ws, config)
    front = Front('nginx', ws, nginx.port, '/fibosms/' + TOKEN, tls=True, receiver=receiver)
    front.servers = [receiver, start_or_stop(nginx, receiver)]
    return front


def start_or_stop(server, receiver):
    """server.start(), or, when it fails, the receiver behind it stopped too."""
    try:
        return server.start()
    except BaseException:
        receiver.stop()
        raise


def start_passenger(ws):
    ws.folder('app', 'public')
    ws.copy(os.path.join(servers.DEPLOY, 'passenger_wsgi.py'),
            os.path.join(ws.app, 'passenger_wsgi.py'), 0o644)
    host = ('PassengerRoot %s\nPassengerDefaultRuby /usr/bin/ruby\n'
            'PassengerInstanceRegistryDir %s\n' % (servers.PASSENGER_ROOT, ws.run))
    config = servers.snippet('apache-passenger.conf', servers.tls_replacements(ws) + [
        ('<VirtualHost *:443>', '<VirtualHost *:{port}>'),
        ('DocumentRoot /var/www/html', 'DocumentRoot %s' % ws.www),   # not granted
        ('PassengerUser fibosms', 'PassengerUser %s' % ws.user),
        ('PassengerGroup fibosms', 'PassengerGroup %s' % ws.group),
        ('/srv/fibosms/app', ws.app),
        ('/srv/fibosms/data', ws.data),
        ('change-me-to-a-long-random-secret', TOKEN),
    ])
    modules = ['passenger', 'headers', 'reqtimeout', 'rewrite']
    apache = servers.Apache(ws, modules, host + config).start()
    front = Front('passenger', ws, apache.port, '/fibosms/' + TOKEN, tls=True)
    front.servers = [apache]
    return front


STARTERS = {'mod_wsgi': start_mod_wsgi, 'cgi': start_cgi, 'passenger': start_passenger,
            'apache_proxy': start_apache_proxy, 'nginx': start_nginx}


@pytest.fixture(scope='module')
def fronts():
    """fronts(name) -> that set-up, started at its first use and stopped after the module."""
    started = {}

    def get(name):
        if name not in started:
            ws = servers.Workspace('attack-' + name)
            try:
                started[name] = STARTERS[name](ws)
            except BaseException:
                ws.remove()
                raise
        front = started[name]
        front.since = front.mark()
        return front
    try:
        yield get
    finally:
        for front in started.values():
            for server in reversed(front.servers):
                server.stop()
            front.ws.remove()


# -- Raw HTTP ---------------------------------------------------------------------------------

def connect(front, timeout=20.0, source=None):
    """A connection to the set-up (TLS when it serves TLS), from address `source`."""
    sock = socket.create_connection(('127.0.0.1', front.port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if front.cafile:
        context = ssl.create_default_context(cafile=front.cafile)
        sock = context.wrap_socket(sock, server_hostname='127.0.0.1')
    return sock


def exchange(front, data, timeout=20.0, source=None):
    """Send `data` (bytes) on a fresh connection; the servers.Response, or None when the
    server closed the connection without a byte of answer."""
    sock = connect(front, timeout, source)
    try:
        # In pieces, stopping when an answer comes: a server that answers before the whole
        # body is in (413) may close, and bytes sent after that make the kernel reset the
        # connection, answer unread. (A non-blocking recv, not select(): TLS 1.3 session
        # tickets make a socket readable with no answer in it yet.)
        early = b''
        for start in range(0, len(data), 4096):
            try:
                sock.sendall(data[start:start + 4096])
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.setblocking(False)
            try:
                early = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            except (ConnectionResetError, ssl.SSLError):
                break
            finally:
                sock.settimeout(timeout)
            if early:
                break
        return read_response(sock, early)
    finally:
        sock.close()


class Received:
    """Bytes read whole, handed to http.client as the socket it parses from."""

    def __init__(self, data):
        self.data = data

    def makefile(self, mode):
        return io.BytesIO(self.data)


def read_response(sock, data=b''):
    """The servers.Response read from `sock` (after `data`, its first bytes) until the server
    closes it; None when it closed without a byte. An answer with no status line (HTTP/0.9,
    the answer to a request line without a version) has status None and no headers."""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):   # an abrupt close ends the answer
            chunk = b''
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    if not data.startswith(b'HTTP/'):
        return servers.Response(None, {}, data)
    response = http.client.HTTPResponse(Received(data))
    response.begin()
    try:
        body = response.read()
    except http.client.IncompleteRead as exc:
        body = exc.partial
    return servers.Response(response.status, response.headers, body)


def request_bytes(target, headers=(), method='GET', body=b''):
    """An HTTP/1.1 request for `target` as bytes, with `headers` (name, value) pairs added."""
    lines = ['%s %s HTTP/1.1' % (method, target), 'Host: 127.0.0.1',
             'User-Agent: fibosms-attack-tests', 'Connection: close']
    lines += ['%s: %s' % pair for pair in headers]
    if body:
        lines.append('Content-Length: %d' % len(body))
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body


def push_target(path, phone, message, guid):
    """`path` with a push's query string, encoded as the gateway does."""
    return '%s?%s' % (path, servers.push_query(message, phone, guid))


# -- What every answer and every log must be --------------------------------------------------

def assert_status_document(response, body=RETRY, codes=None):
    """`response` is the Status document `body`, as text/xml; charset=utf-8, with a status
    among `codes`."""
    assert response is not None, 'closed without an answer'
    assert response.body == body, response
    assert response.headers['Content-Type'] == CONTENT_TYPE, (response, response.headers)
    if codes is not None:
        assert response.status in codes, response


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
    if not os.path.exists(front.db):
        return []
    try:
        return servers.stored(front.db, guid)
    except sqlite3.OperationalError as exc:
        if 'no such table' not in str(exc):
            raise
        return []


def new_phone():
    """A phone number no other test uses: found in a log, it names the test that leaked it."""
    return '849%08d' % (uuid.uuid4().int % 10 ** 8)


def marker():
    """An ASCII word inside each message: the same in the query, encoded or not."""
    return 'zq' + servers.new_guid().replace('-', '')[-12:]


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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    """With the receiver stopped, a push gets 502/503 as a Status document; the front end's
    logs hold neither secret nor push; the receiver back, the gateway's resend is stored."""
    front = fronts(name)
    phone, word, guid = new_phone(), marker(), servers.new_guid()
    target = push_target(front.page, phone, 'Xin chào %s' % word, guid)
    port = front.receiver.port
    front.receiver.stop()
    try:
        for _ in range(3):
            response = exchange(front, request_bytes(target))
            assert_status_document(response, codes=[502, 503, 504])
    finally:
        front.receiver = servers.Receiver(front.ws, port=port).start()
        front.servers[0] = front.receiver
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
    target = push_target(front.page, phone, 'Xin chào %s' % word, guid)
    front.receiver.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = exchange(front, request_bytes(target), timeout=60)
        waited = time.monotonic() - started
    finally:
        front.receiver.process.send_signal(signal.SIGCONT)
    assert_status_document(response, codes=[502, 503, 504])
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
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
    phone, word, guid = new_phone(), marker(), servers.new_guid()
    target = push_target(front.page, phone, word, servers.new_guid())
    if part == 'headers':
        first = ('GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n' % target).encode()
        trickle = b'X-Slow: ' + b'a' * 200
    else:
        body = servers.push_query(word, phone, servers.new_guid()).encode()
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
