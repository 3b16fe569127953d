"""What the tests share, and the one place that knows how to run each part for real.

- Requirements: `need` skips a test whose server, tool or privilege this machine lacks, with
  the Debian packages to install in its reason; when CI is set it fails instead, so that CI
  never skips what it should run (.ci/run installs everything).
- HTTP: `get` (a URL, through urllib), `push_query`, `exchange` (raw bytes over a socket, TLS
  or not, the answer parsed), `request_bytes`.
- The data: `rows`, `stored`, `integrity`, `deliveries`.
- receiver.py run for real: `run_cgi` (one CGI process), `Server` (the small server).
- The shipped set-ups (`start`): a Workspace (a private folder tree with the code, a data
  folder and its settings file, logs, a TLS certificate) and a real server in it, built from
  deploy/'s files changed only on the lines they mark CHANGE and in their paths: Apache 2.4
  with mod_wsgi, mod_cgid (and suEXEC), Passenger, or mod_proxy in front of the small server;
  nginx in front of it; the small server alone, started as the systemd unit says. Every server
  listens on 127.0.0.1 only.
- Stand-ins for the business's application: `Application` (an HTTP server that answers as a
  test says) and `Consumer` (deploy/consumer.php under php -S).

This module holds no tests.
"""
import grp
import http.client
import http.server
import io
import os
import pwd
import select
import shlex
import shutil
import signal
import socket
import socketserver
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, 'deploy')
RECEIVER = os.path.join(ROOT, 'receiver.py')
CODE = sorted(name for name in os.listdir(ROOT) if name.endswith('.py'))   # what users upload
DONE = b'<Status>2</Status>'
RETRY = b'<Status>1</Status>'
CONTENT_TYPE = 'text/xml; charset=utf-8'
APACHE_MODULES = '/usr/lib/apache2/modules'
SYSTEM_PYTHON = '/usr/bin/python3'     # what mod_wsgi, Passenger, CGI and the unit file run
START_TIMEOUT = 20.0                   # seconds for a server to accept connections
REQUEST_TIMEOUT = 30.0                 # seconds for one answer: well over the busy timeout
# The environment servers start with: a web server's, not this test run's (no pyenv on PATH).
SERVER_ENV = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
              'LANG': 'C.UTF-8'}

TOKEN = 'Zx9-test-secret_4f1c'
WRONG_TOKEN = 'Zx9-test-secret_4f1d'
PHONE = '+84912345678'
# Vietnamese with every kind of diacritic, an emoji, a '+', an '&' and a '=' that must survive.
VIETNAMESE = 'Tôi muốn đặt 2 vé ở Đà Nẵng, giá 1+1=2 & ưu đãi 150.000đ 😊'
SQLITE_MAGIC = b'SQLite format 3\x00'
DECOYS = ('messages.sqlite3', 'messages.sqlite3-wal', 'messages.sqlite3-shm',
          'messages.sqlite3-journal')


# -- What a test needs ------------------------------------------------------------------------

# What each real part needs: (the file that shows it is there, the Debian packages).
PARTS = {
    'apache2': ('/usr/sbin/apache2', 'apache2'),
    'mod_wsgi': (APACHE_MODULES + '/mod_wsgi.so', 'libapache2-mod-wsgi-py3'),
    'passenger': (APACHE_MODULES + '/mod_passenger.so', 'libapache2-mod-passenger'),
    'suexec': ('/usr/lib/apache2/suexec', 'apache2-suexec-pristine'),
    'nginx': ('/usr/sbin/nginx', 'nginx'),
    'openssl': ('/usr/bin/openssl', 'openssl'),
    'php': ('/usr/bin/php', 'php-cli php-sqlite3'),
    'systemd-analyze': ('/usr/bin/systemd-analyze', 'systemd'),
    'system python': (SYSTEM_PYTHON, 'python3'),
    'chromium': ('/usr/bin/chromium', 'chromium'),
    'chromedriver': ('/usr/bin/chromedriver', 'chromium-driver'),
}


def need(*parts):
    """Skip the test unless each of `parts` (keys of PARTS, or 'root') is on this machine; the
    reason names what to install. With CI set, fail instead: CI installs them all."""
    missing = [part for part in parts if part != 'root' and not os.path.exists(PARTS[part][0])]
    reason = []
    if missing:
        reason.append('needs %s (apt-get install %s)' % (', '.join(missing), ' '.join(
            PARTS[part][1] for part in missing)))
    if 'root' in parts and os.geteuid() != 0:
        reason.append('needs root: its servers switch to www-data and nobody')
    if reason:
        (pytest.fail if os.environ.get('CI') else pytest.skip)('; '.join(reason))


def clean_env(**more):
    """A process environment with no FIBOSMS_* setting of this shell, and `more`."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith('FIBOSMS_'))
    env.update(more)
    return env


# -- The data ---------------------------------------------------------------------------------

def rows(db):
    """Every stored message as a dict, in insertion order ([] when there is no database)."""
    if not os.path.exists(db):
        return []
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute('SELECT * FROM messages ORDER BY id')]
    except sqlite3.OperationalError as exc:
        if 'no such table' in str(exc):
            return []
        raise
    finally:
        conn.close()


def stored(db, guid):
    """The rows stored for `guid`, as dicts."""
    return [row for row in rows(db) if row['guid'] == guid]


def integrity(db):
    """PRAGMA integrity_check's verdict, one string ('ok' when the file is sound)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return ', '.join(r[0] for r in conn.execute('PRAGMA integrity_check'))
    finally:
        conn.close()


def deliveries(db):
    """{guid: deliveries} of every stored message; asserts each guid is there once."""
    pairs = [(row['guid'], row['deliveries']) for row in rows(db)]
    counts = dict(pairs)
    assert len(counts) == len(pairs), 'a guid is stored more than once'
    return counts


def new_guid():
    return 'test-' + str(uuid.uuid4())


def push_query(message, phone, guid):
    """The push's query string, encoded as FiboSMSGateway does (UTF-8, see deploy/push.py)."""
    return urllib.parse.urlencode([('message', message), ('phone', phone), ('guid', guid)],
                                  encoding='utf-8')


# -- HTTP -------------------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return '<Response %s %r>' % (self.status, self.body[:200])


def get(url, cafile=None, timeout=20.0, headers=None):
    """GET `url` (trusting `cafile` for https); the Response, whatever its status."""
    context = ssl.create_default_context(cafile=cafile) if url.startswith('https:') else None
    request = urllib.request.Request(url, headers=dict({'User-Agent': 'fibosms-tests'},
                                                       **(headers or {})))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, exc.headers, exc.read())


def request_bytes(target, headers=(), method='GET', body=b''):
    """An HTTP/1.1 request for `target` as bytes, with `headers` (name, value) pairs added."""
    lines = ['%s %s HTTP/1.1' % (method, target), 'Host: 127.0.0.1',
             'User-Agent: fibosms-tests', 'Connection: close']
    lines += ['%s: %s' % pair for pair in headers]
    if body:
        lines.append('Content-Length: %d' % len(body))
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body


def connect(port, cafile=None, timeout=20.0, source=None):
    """A connection to 127.0.0.1:`port` (TLS trusting `cafile`, if given), from `source`."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    if cafile:
        sock = ssl.create_default_context(cafile=cafile).wrap_socket(
            sock, server_hostname='127.0.0.1')
    return sock


def exchange(port, data, cafile=None, timeout=20.0, source=None, half_close=False):
    """Send `data` (bytes) on a new connection; the Response, status None when the answer
    has no status line, or None when the server closed without a byte."""
    sock = connect(port, cafile, timeout, source)
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
        if half_close and not early and not cafile:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
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
    """The Response read from `sock` (after `data`, its first bytes) until the server closes
    it; None when it closed without a byte."""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, socket.timeout):
            chunk = b''
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    if not data.startswith(b'HTTP/'):
        return Response(None, {}, data)
    response = http.client.HTTPResponse(Received(data))
    response.begin()
    try:
        body = response.read()
    except http.client.IncompleteRead as exc:
        body = exc.partial
    response.head = data.partition(b'\r\n\r\n')[0]
    return Response(response.status, response.headers, body)


def assert_status_document(response, body=RETRY, codes=None):
    """`response` is the Status document `body`, text/xml; charset=utf-8, a code of `codes`."""
    assert response is not None, 'closed without an answer'
    assert response.body == body, response
    assert response.headers['Content-Type'] == CONTENT_TYPE, (response, response.headers)
    if codes is not None:
        assert response.status in codes, response


def http_request(port, method='GET', target='/', body=None, headers=None,
                 timeout=REQUEST_TIMEOUT):
    """One request on a new connection: (status, body), or (None, None) when the connection
    failed or closed before a whole answer (the server died, say)."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        conn.close()


def push(port, query, path='/'):
    """GET path?query on a plain-HTTP server at `port`: (status, body) or (None, None)."""
    return http_request(port, 'GET', path + '?' + query)


def answer_is_status_document(status, body):
    """The answer is the gateway's document: 2 with 200; 1 with any code."""
    return status is not None and body in ((DONE, RETRY) if status == 200 else (RETRY,))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, explain, timeout=START_TIMEOUT):
    """Return when 127.0.0.1:port accepts a connection; raise explain() if `process` exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError('exited with %s. %s' % (process.returncode, explain()))
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError('not listening after %g s. %s' % (timeout, explain()))
            time.sleep(0.05)


def stop_process(process, timeout=15.0):
    """Stop a process we started: SIGTERM, then SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- receiver.py as a CGI process and as the small server -------------------------------------

def cgi_environ(db, query, method='GET', body=b'', extra=None):
    """A CGI/1.1 environment such as Apache gives receiver.py for one push, its home the
    folder above DB's."""
    env = clean_env(
        LANG='C.UTF-8', GATEWAY_INTERFACE='CGI/1.1', SERVER_PROTOCOL='HTTP/1.1',
        SERVER_SOFTWARE='test', SERVER_NAME='127.0.0.1', SERVER_PORT='80',
        REQUEST_METHOD=method, SCRIPT_NAME='/receiver.cgi', PATH_INFO='', QUERY_STRING=query,
        REMOTE_ADDR='127.0.0.1', FIBOSMS_DB=db, HOME=os.path.dirname(os.path.dirname(db)))
    if body:
        env.update(CONTENT_LENGTH=str(len(body)),
                   CONTENT_TYPE='application/x-www-form-urlencoded')
    env.update(extra or {})
    return dict((k, v) for k, v in env.items() if v is not None)


def start_cgi(db, query, argv=None, preexec_fn=None, **kwargs):
    """receiver.py as one CGI process, started (stdin: the body, if any); `argv` replaces
    [sys.executable, RECEIVER], `preexec_fn` runs in the child (to change user, say)."""
    return subprocess.Popen(argv or [sys.executable, RECEIVER],
                            env=cgi_environ(db, query, **kwargs), preexec_fn=preexec_fn,
                            stdin=subprocess.PIPE if kwargs.get('body') else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd='/')


def cgi_answer(stdout):
    """(status code, body) from a CGI process's output; (None, None) if it is not whole."""
    head, sep, body = stdout.partition(b'\r\n\r\n')
    if not sep or not head.startswith(b'Status: '):
        return None, None
    return int(head[8:11]), body


def run_cgi(db, query, timeout=REQUEST_TIMEOUT, **kwargs):
    """Run one CGI process to its end: (status code, body, stderr text)."""
    process = start_cgi(db, query, **kwargs)
    try:
        out, err = process.communicate(kwargs.get('body') or None, timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    code, body = cgi_answer(out)
    return code, body, err.decode('utf-8', 'replace')


class Server:
    """`python3 receiver.py --port 0 --db DB` in a process of its own, on 127.0.0.1.

    `env` is added to a clean environment whose home is the folder above DB's (so that a
    settings file is read only if it is HOME/fibosms-data/settings.env); stderr (the request
    and error log) goes to a file, read with `log()`. `kill()` is kill -9;
    `stop()` always ends the process. A context manager.
    """

    def __init__(self, db, log_path, env=None, argv=None):
        self.db, self.log_path = db, log_path
        environ = clean_env(HOME=os.path.dirname(os.path.dirname(db)))
        environ.update(env or {})
        with open(log_path, 'ab') as log:
            self.process = subprocess.Popen(
                (argv or [sys.executable, RECEIVER])
                + ['--host', '127.0.0.1', '--port', '0', '--db', db],
                stdout=subprocess.PIPE, stderr=log, env=environ, cwd='/')
        # A server that never says it listens is killed, which ends the readline() below.
        watchdog = threading.Timer(START_TIMEOUT, self.process.kill)
        watchdog.start()
        try:
            first = self.process.stdout.readline().decode('ascii', 'replace')
            self.process.stdout.readline()   # "Database: PATH"
        finally:
            watchdog.cancel()
        if not first.startswith('Listening on http://127.0.0.1:'):
            self.stop()
            raise RuntimeError('receiver.py did not start: %r\n%s' % (first, self.log()))
        self.port = int(first.rstrip().rstrip('/').rpartition(':')[2])

    def log(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def kill(self):
        """kill -9, and wait for the process to be gone."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# -- The shipped set-ups: a workspace, and a real server in it --------------------------------

def run_user():
    """(user, group) the receiver runs as: www-data when we are root, else ourselves."""
    if os.geteuid() == 0:
        return 'www-data', 'www-data'
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


class Workspace:
    """A private folder tree for one set-up; remove() deletes it. Not pytest's tmp_path: that
    lives under a 0700 folder of root's, which the receiver's user could not enter.

    app/            the code, every .py file of the project (what a user uploads)
    fibosms-data/   the data folder, the receiver's user's, 0700: settings.env (deploy/'s, with
                    TOKEN in it), and what the receiver makes: messages.sqlite3, receiver.log
    www/, logs/, run/, tls/
    """

    def __init__(self, name, settings=True):
        need('openssl')
        self.base = tempfile.mkdtemp(prefix='fibosms-%s-' % name)
        os.chmod(self.base, 0o755)
        self.user, self.group = run_user()
        self.uid = pwd.getpwnam(self.user).pw_uid
        self.gid = grp.getgrnam(self.group).gr_gid
        self.app = self.folder('app')
        self.www = self.folder('www')
        self.logs = self.folder('logs')
        self.run = self.folder('run')
        self.data = self.folder('fibosms-data', owned=True, mode=0o700)
        self.config = os.path.join(self.data, 'settings.env')
        self.db = os.path.join(self.data, 'messages.sqlite3')
        for name in CODE:
            self.copy(os.path.join(ROOT, name), os.path.join(self.app, name), 0o644)
        self.cert, self.key = make_certificate(self.folder('tls', mode=0o700))
        if settings:
            self.settings()

    def settings(self, *lines, **replacements):
        """Write the data folder's settings.env: deploy/settings.env with TOKEN as the secret,
        its other lines replaced as (old, new) `replacements`, and `lines` added."""
        text = snippet('settings.env', [('change-me-to-a-long-random-secret', TOKEN)]
                       + list(replacements.get('replace', ())))
        self.write(self.config, text + ''.join(line + '\n' for line in lines), mode=0o600)
        owner = os.stat(self.data)     # the receiver's user, or under suEXEC the site's owner
        os.chown(self.config, owner.st_uid, owner.st_gid)

    def folder(self, *parts, **kwargs):
        """Make base/parts (mode 755, or mode=); owned=True gives it to the receiver's user."""
        path = os.path.join(self.base, *parts)
        os.makedirs(path)
        os.chmod(path, kwargs.get('mode', 0o755))
        if kwargs.get('owned'):
            os.chown(path, self.uid, self.gid)
        return path

    def copy(self, source, target, mode, owned=False):
        shutil.copyfile(source, target)
        os.chmod(target, mode)
        if owned:
            os.chown(target, self.uid, self.gid)
        return target

    def write(self, path, text, mode=0o644):
        with open(path, 'w', encoding='utf-8', newline='\n') as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def log(self, name):
        """The text of logs/name (or of a path), '' while it does not exist."""
        try:
            with open(os.path.join(self.logs, name), encoding='utf-8', errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def receiver_log(self):
        """The receiver's own log, fibosms-data/receiver.log."""
        return self.log(os.path.join(self.data, 'receiver.log'))

    def remove(self):
        shutil.rmtree(self.base, ignore_errors=True)


def make_certificate(folder):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    cert, key = os.path.join(folder, 'cert.pem'), os.path.join(folder, 'key.pem')
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
         '-nodes', '-days', '2',
         '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
         '-keyout', key, '-out', cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key


def snippet(name, replacements=()):
    """The text of deploy/name with each (old, new) replaced; every `old` must be there, so a
    snippet that changes under the tests breaks them instead of going untested."""
    with open(os.path.join(DEPLOY, name), encoding='utf-8') as f:
        text = f.read()
    for old, new in replacements:
        if old not in text:
            raise AssertionError('deploy/%s no longer contains %r' % (name, old))
        text = text.replace(old, new)
    return text


def cgi_script(ws, more=()):
    """deploy/cgi/receiver.cgi with its lines filled in: the code's folder and the settings
    file of workspace `ws`, and `more` (old, new) pairs."""
    return snippet('cgi/receiver.cgi', [
        ("os.path.expanduser('~/fibosms')", repr(ws.app)),
        ('CONFIG = None', 'CONFIG = %r' % ws.config)] + list(more))


def tls_replacements(ws):
    """The certificate lines of the shipped Apache and nginx snippets, pointed at ours."""
    return [('/etc/letsencrypt/live/sms.example.com/fullchain.pem', ws.cert),
            ('/etc/letsencrypt/live/sms.example.com/privkey.pem', ws.key)]


def apache_site(name, ws, more=()):
    """deploy/`name` (an Apache site) for workspace `ws`: its port, folders, user and
    certificate, and `more` (old, new) pairs."""
    return snippet(name, tls_replacements(ws) + [
        ('<VirtualHost *:443>', '<VirtualHost *:{port}>'),
        ('DocumentRoot /var/www/html', 'DocumentRoot %s' % ws.www)] + [
        pair for pair in [('user=fibosms group=fibosms', 'user=%s group=%s' % (ws.user, ws.group)),
                          ('PassengerUser fibosms', 'PassengerUser %s' % ws.user),
                          ('PassengerGroup fibosms', 'PassengerGroup %s' % ws.group),
                          ('/srv/fibosms', ws.base)]
        if pair[0] in snippet(name)] + list(more))


def a2enmod(name):
    """The modules deploy/`name`'s install steps enable (its `a2enmod` line): what the tests
    load, so that a module the snippet needs but does not name fails them."""
    [line] = [line for line in snippet(name).splitlines() if line.startswith('#   a2enmod ')]
    return line.split()[2:]


def place_decoys(folder, ws):
    """Put in `folder` what must never be downloadable: a real database with -wal, -shm and
    -journal files (DECOYS), and hello.txt, which must be (the server does serve the folder)."""
    db = os.path.join(folder, 'messages.sqlite3')
    conn = sqlite3.connect(db)
    conn.execute('CREATE TABLE secret (phone TEXT)')
    conn.execute("INSERT INTO secret VALUES ('84900000000')")
    conn.commit()
    conn.close()
    os.chmod(db, 0o644)
    for name in DECOYS[1:]:
        ws.write(os.path.join(folder, name), 'SQLite side file\n')
    ws.write(os.path.join(folder, 'hello.txt'), 'hello\n')


# What `apt-get install apache2` enables (Debian 12), and the confs it enables: the tests run
# every Apache set-up on Debian's own apache2.conf with these, as a server left as installed.
DEBIAN_MODULES = ('access_compat', 'alias', 'auth_basic', 'authn_core', 'authn_file',
                  'authz_core', 'authz_host', 'authz_user', 'autoindex', 'deflate', 'dir',
                  'env', 'filter', 'mime', 'mpm_event', 'negotiation', 'reqtimeout',
                  'setenvif', 'status')
DEBIAN_CONFS = ('charset', 'localized-error-pages', 'other-vhosts-access-log', 'security',
                'serve-cgi-bin')
DEBIAN_APACHE = '/etc/apache2'

PORTS_CONFIG = """\
# The host's part: Debian's ports.conf (on 127.0.0.1), and what a private instance needs.
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
Mutex file:{run} default
"""


class Apache:
    """A private Apache: Apache(ws, modules, site_config).start() ... stop(). It runs Debian's
    apache2.conf as installed, in a ServerRoot of its own: mods-enabled/ holds DEBIAN_MODULES
    and `modules` (each one's .load and .conf, as a2enmod links them), conf-enabled/ `confs`
    (DEBIAN_CONFS: security.conf's TraceEnable Off, status.conf's /server-status...), and
    sites-enabled/ `site_config` (as a2ensite). Its logs go to ws.logs."""

    def __init__(self, ws, modules, site_config, port=None, confs=DEBIAN_CONFS):
        need('root', 'apache2', *[part for part in ('mod_wsgi', 'passenger', 'suexec')
                                  if part.replace('mod_', '') in modules])
        self.ws = ws
        self.port = port or free_port()
        self.process = None
        self.root = ws.folder('apache2')
        for folder in ('mods-enabled', 'conf-enabled', 'sites-enabled'):
            os.mkdir(os.path.join(self.root, folder))
        os.makedirs(os.path.join(ws.run, 'socks'), exist_ok=True)   # cgid.conf's ScriptSock
        shutil.copyfile(os.path.join(DEBIAN_APACHE, 'apache2.conf'),
                        os.path.join(self.root, 'apache2.conf'))
        enabled = []
        for module in DEBIAN_MODULES + ('socache_shmcb', 'ssl') + tuple(modules):
            for end in ('.load', '.conf'):
                source = os.path.join(DEBIAN_APACHE, 'mods-available', module + end)
                if module not in enabled and os.path.exists(source):
                    os.symlink(source, os.path.join(self.root, 'mods-enabled', module + end))
            enabled.append(module)
        for conf in confs:
            os.symlink(os.path.join(DEBIAN_APACHE, 'conf-available', conf + '.conf'),
                       os.path.join(self.root, 'conf-enabled', conf + '.conf'))
        ws.write(os.path.join(self.root, 'ports.conf'),
                 PORTS_CONFIG.format(port=self.port, run=ws.run))
        self.config = ws.write(os.path.join(self.root, 'sites-enabled', 'site.conf'),
                               site_config.replace('{port}', str(self.port)))
        self.env = dict(SERVER_ENV, APACHE_RUN_USER=ws.user, APACHE_RUN_GROUP=ws.group,
                        APACHE_PID_FILE=os.path.join(ws.run, 'apache2.pid'),
                        APACHE_RUN_DIR=ws.run, APACHE_LOCK_DIR=ws.run, APACHE_LOG_DIR=ws.logs)

    def start(self):
        out = open(os.path.join(self.ws.logs, 'apache_stdout.log'), 'wb')
        self.process = subprocess.Popen(
            ['/usr/sbin/apache2', '-d', self.root, '-f', os.path.join(self.root, 'apache2.conf'),
             '-DFOREGROUND'], env=self.env, cwd=self.ws.base, stdout=out,
            stderr=subprocess.STDOUT)
        out.close()
        wait_for_port(self.port, self.process, lambda: (
            'Apache (%s) did not start.\n--- stdout/stderr:\n%s\n--- error.log:\n%s' % (
                self.config, self.ws.log('apache_stdout.log'), self.ws.log('error.log'))))
        return self

    def stop(self):
        stop_process(self.process)


NGINX_HOST_CONFIG = """\
# The host's part: what Debian's nginx.conf supplies.
user {user} {group};
worker_processes 1;
pid {run}/nginx.pid;
error_log {logs}/error.log warn;
events {{
    worker_connections 64;
}}
http {{
    include /etc/nginx/mime.types;
    access_log {logs}/host_access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {site};
}}
"""


class Nginx:
    """A private nginx: Nginx(ws, site_config).start() ... stop()."""

    def __init__(self, ws, site_config, port=None):
        need('root', 'nginx')
        self.ws = ws
        self.port = port or free_port()
        self.process = None
        site = ws.write(os.path.join(ws.base, 'site.conf'),
                        site_config.replace('{port}', str(self.port)))
        temp = ws.folder('nginx_temp', owned=True, mode=0o700)
        self.config = ws.write(os.path.join(ws.base, 'nginx.conf'), NGINX_HOST_CONFIG.format(
            user=ws.user, group=ws.group, run=ws.run, logs=ws.logs, temp=temp, site=site))

    def start(self):
        out = open(os.path.join(self.ws.logs, 'nginx_stdout.log'), 'wb')
        self.process = subprocess.Popen(
            ['/usr/sbin/nginx', '-p', self.ws.base, '-e', os.path.join(self.ws.logs, 'error.log'),
             '-c', self.config, '-g', 'daemon off;'],
            env=SERVER_ENV, cwd=self.ws.base, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for_port(self.port, self.process, lambda: (
            'nginx (%s) did not start.\n--- stdout/stderr:\n%s\n--- error.log:\n%s' % (
                self.config, self.ws.log('nginx_stdout.log'), self.ws.log('error.log'))))
        return self

    def stop(self):
        stop_process(self.process)


def unit_settings(name):
    """The values of `name=` in deploy/fibosms-receiver.service, in order."""
    values = [line[len(name) + 1:] for line in snippet('fibosms-receiver.service').splitlines()
              if line.startswith(name + '=')]
    if not values:
        raise AssertionError('deploy/fibosms-receiver.service has no %s=' % name)
    return values


def unit_environment(ws):
    """The environment the unit gives the receiver (its Environment= lines, our paths in)."""
    env = dict(SERVER_ENV, HOME=ws.base, USER=ws.user)
    for line in unit_settings('Environment'):
        for assignment in shlex.split(line.replace('/var/lib/fibosms', ws.base)):
            name, _, value = assignment.partition('=')
            env[name] = value
    return env


def socket_settings():
    """{name: value} of deploy/fibosms-receiver.socket's [Socket] lines."""
    return dict(line.split('=', 1) for line in snippet('fibosms-receiver.socket').splitlines()
                if '=' in line and not line.startswith('#'))


class Receiver:
    """`python3 receiver.py ...` started from the unit's ExecStart, as the unit's user would
    run it (www-data standing in for fibosms), with only our paths swapped in. With
    `socket_path`, as systemd starts it from fibosms-receiver.socket: the socket made first,
    as that unit says (its owner, its mode), and passed as file descriptor 3 with LISTEN_FDS
    and LISTEN_PID; it outlives the process, as systemd's does (restart() keeps it). Without,
    on 127.0.0.1:`port` (--host, --port), as `python3 receiver.py` alone."""

    def __init__(self, ws, port=None, socket_path=None):
        need('system python')
        self.ws, self.socket_path, self.listener = ws, socket_path, None
        self.port = None if socket_path else port or free_port()
        self.process = None
        self.listening = None
        self.argv = shlex.split(unit_settings('ExecStart')[-1]
                                .replace('/opt/fibosms', ws.app))
        if not socket_path:
            self.argv += ['--host', '127.0.0.1', '--port', str(self.port)]
        self.stderr_path = os.path.join(ws.logs, 'receiver_stderr.log')

    def listen(self):
        """The socket systemd would make from fibosms-receiver.socket (root makes it; the front
        end's user, ws.user here, owns it)."""
        settings = socket_settings()
        assert (settings['ListenStream'], settings['SocketUser'], settings['SocketGroup']) == (
            RECEIVER_SOCKET, 'www-data', 'www-data'), settings
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.chown(self.socket_path, self.ws.uid, self.ws.gid)    # www-data, or ourselves
        os.chmod(self.socket_path, int(settings['SocketMode'], 8))
        listener.listen(128)
        return listener

    def start(self):
        if self.socket_path and self.listener is None:
            self.listener = self.listen()
        argv, env, keep = self.argv, unit_environment(self.ws), ()
        if self.listener is not None:   # sd_listen_fds(3): fd 3, and LISTEN_PID its pid
            argv = ['/bin/sh', '-c', 'LISTEN_PID=$$ exec "$@"', 'sh'] + argv
            env, keep = dict(env, LISTEN_FDS='1'), (3,)
        err = open(self.stderr_path, 'ab')
        self.process = subprocess.Popen(
            argv, env=env, cwd='/', stdout=subprocess.PIPE, stderr=err, pass_fds=keep,
            preexec_fn=self.child)
        err.close()
        # "Listening on ..." and "Database: PATH", read from the pipe's file descriptor
        # (select() knows nothing of a file object's buffer) with a deadline.
        out, fd = b'', self.process.stdout.fileno()
        deadline = time.monotonic() + START_TIMEOUT
        while out.count(b'\n') < 2:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b''
            if not chunk:
                break
            out += chunk
        lines = out.decode('utf-8', 'replace').splitlines(True)
        self.listening = lines
        explain = lambda: '%s did not start.\n--- stdout:\n%s\n--- stderr:\n%s' % (
            ' '.join(self.argv), ''.join(lines), self.ws.log('receiver_stderr.log'))
        if self.port:
            wait_for_port(self.port, self.process, explain)
        elif len(lines) < 2 or self.process.poll() is not None:
            stop_process(self.process)
            raise RuntimeError(explain())
        return self

    def child(self):
        if self.listener is not None:
            os.dup2(self.listener.fileno(), 3)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(self.ws.gid)
            os.setuid(self.ws.uid)
        os.umask(0o077)   # the unit's UMask=

    def restart(self):
        """Stop the process and start another on the same socket, as systemd restarts the
        unit: connections made meanwhile wait in the socket's queue."""
        self.stop_process()
        return self.start()

    def stop_process(self):
        stop_process(self.process)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self):
        """The process, and its socket too (systemd's stopped: connecting is refused)."""
        self.stop_process()
        if self.listener is not None:
            self.listener.close()
            os.unlink(self.socket_path)
            self.listener = None


class SetUp:
    """One shipped set-up, running: `port` and `cafile` to reach it, `page` the push's path
    (with the secret), `url` its address, `db` and `ws` its data, `receiver` the small server
    behind a proxy. logs() is every log file it writes (but the host's own, `host_logs`)."""

    def __init__(self, name, ws, port, page, tls, receiver=None, host_logs=()):
        self.name, self.ws, self.port, self.page = name, ws, port, page
        self.cafile = ws.cert if tls else None
        self.url = '%s://127.0.0.1:%d%s' % ('https' if tls else 'http', port, page)
        self.db, self.receiver = ws.db, receiver
        self.host_logs = set(host_logs)
        self.servers = []                 # stopped in reverse order
        self.since = None                 # mark() at the start of the current test

    def logs(self, since=None):
        """{file name: text} of every log file the set-up writes, receiver.log included, from
        the offsets in `since` (a mark()) on."""
        texts = {}
        names = [n for n in sorted(os.listdir(self.ws.logs)) if n not in self.host_logs]
        for name in names + [os.path.join(self.ws.data, 'receiver.log')]:
            texts[name] = self.ws.log(name)[(since or {}).get(name, 0):]
        return texts

    def mark(self):
        """The current length of every log, for logs(since=...)."""
        return dict((name, len(text)) for name, text in self.logs().items())

    def push(self, message=VIETNAMESE, phone=PHONE, guid=None, page=None):
        """A push to the page (or `page`): (guid, Response)."""
        guid = guid or new_guid()
        base = 'https' if self.cafile else 'http'
        url = '%s://127.0.0.1:%d%s?%s' % (base, self.port, self.page if page is None else page,
                                            push_query(message, phone, guid))
        return guid, get(url, self.cafile)

    def stop(self):
        for server in reversed(self.servers):
            server.stop()
        self.ws.remove()


def start(name, ws=None, **options):
    """The set-up `name` (a key of STARTERS) in `ws` (a new Workspace by default), running."""
    ws = ws or Workspace(name)
    try:
        return STARTERS[name](ws, **options)
    except BaseException:
        ws.remove()
        raise


def setup_mod_wsgi(ws, host='', more=(), confs=DEBIAN_CONFS):
    config = apache_site('apache-mod_wsgi.conf', ws, more)
    apache = Apache(ws, a2enmod('apache-mod_wsgi.conf'), host + config, confs=confs).start()
    front = SetUp('mod_wsgi', ws, apache.port, '/fibosms/' + TOKEN, tls=True)
    front.inbox_url = 'https://127.0.0.1:%d/fibosms-inbox/' % apache.port
    front.servers = [apache]
    return front


CGI_HOST_CONFIG = """\
# A shared host: CGI on, .htaccess obeyed. Its access log, Debian's other-vhosts-access-log,
# records whole request lines.
DocumentRoot {www}
Alias /fibosms-inbox {public}/fibosms-inbox
Alias /fibosms {folder}
<Directory {public}>
    Options SymLinksIfOwnerMatch
    AllowOverride All
    Require all granted
</Directory>
"""
SUEXEC_ROOT = '/var/www'                  # suexec-pristine's AP_DOC_ROOT
SUEXEC_USER = ('nobody', 'nogroup')       # AP_UID_MIN and AP_GID_MIN are 100


def setup_cgi(ws, suexec=False, script_more=(), upload=None, host='', script=None):
    """deploy/cgi/ uploaded to a folder the host serves at /fibosms (an Alias, as for a
    user's folder), with the host's DocumentRoot not granted. suexec: the folder is in
    /var/www (suEXEC's document root) and the script runs as nobody, the site's owner, who
    then owns the data folder too. `upload(folder)` adds files to the uploaded folder."""
    owner = pwd.getpwnam(SUEXEC_USER[0] if suexec else ws.user)
    if suexec:
        need('suexec')
        public = tempfile.mkdtemp(prefix='fibosms-test-', dir=SUEXEC_ROOT)
        os.chmod(public, 0o755)
        host = 'SuexecUserGroup %s %s\n' % SUEXEC_USER + host
        ws.cleanups = getattr(ws, 'cleanups', []) + [public]
        os.chown(ws.data, owner.pw_uid, owner.pw_gid)
        ws.settings()
    else:
        public = ws.folder('site')
    folder = os.path.join(public, 'fibosms')
    os.mkdir(folder)
    os.chmod(folder, 0o755)
    ws.copy(os.path.join(DEPLOY, 'cgi', '.htaccess'), os.path.join(folder, '.htaccess'), 0o644)
    ws.write(os.path.join(folder, 'receiver.cgi'), script or cgi_script(ws, script_more),
             mode=0o755)
    if upload:
        upload(folder)
    # The inbox beside it, in a folder of its own (deploy/cgi-inbox/).
    inbox_folder = os.path.join(public, 'fibosms-inbox')
    os.mkdir(inbox_folder)
    os.chmod(inbox_folder, 0o755)
    ws.copy(os.path.join(DEPLOY, 'cgi-inbox', '.htaccess'),
            os.path.join(inbox_folder, '.htaccess'), 0o644)
    ws.write(os.path.join(inbox_folder, 'inbox.cgi'), snippet('cgi-inbox/inbox.cgi', [
        ("os.path.expanduser('~/fibosms')", repr(ws.app)),
        ('CONFIG = None', 'CONFIG = %r' % ws.config)]), mode=0o755)
    for path in (public, folder, os.path.join(folder, 'receiver.cgi'), inbox_folder,
                 os.path.join(inbox_folder, 'inbox.cgi')):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    modules = ['cgid', 'headers', 'rewrite'] + (['suexec'] if suexec else [])
    apache = Apache(ws, modules, host + CGI_HOST_CONFIG.format(
        run=ws.run, www=ws.www, folder=folder, public=public)).start()
    if suexec and 'suEXEC mechanism enabled' not in ws.log('error.log'):
        apache.stop()
        raise RuntimeError('Apache runs without suEXEC:\n' + ws.log('error.log'))
    front = SetUp('cgi', ws, apache.port, '/fibosms/receiver.cgi/' + TOKEN, tls=False,
                  host_logs=['other_vhosts_access.log'])
    front.folder, front.owner = folder, owner
    front.inbox_url = 'http://127.0.0.1:%d/fibosms-inbox/inbox.cgi' % apache.port
    front.servers = [apache, Cleanup(getattr(ws, 'cleanups', []))]
    return front


class Cleanup:
    """Folders a set-up made outside its workspace, removed when it stops."""

    def __init__(self, folders):
        self.folders = folders

    def stop(self):
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)


def setup_passenger(ws, host='', confs=DEBIAN_CONFS):
    ws.folder('app', 'public')
    ws.copy(os.path.join(DEPLOY, 'passenger_wsgi.py'), os.path.join(ws.app, 'passenger_wsgi.py'),
            0o644)
    host = 'PassengerInstanceRegistryDir %s\n' % ws.run + host   # passenger.conf: the rest
    config = apache_site('apache-passenger.conf', ws)
    apache = Apache(ws, a2enmod('apache-passenger.conf'), host + config, confs=confs).start()
    front = SetUp('passenger', ws, apache.port, '/fibosms/' + TOKEN, tls=True)
    front.inbox_url = 'https://127.0.0.1:%d/fibosms/inbox' % apache.port
    front.servers = [apache]
    return front


RECEIVER_SOCKET = '/run/fibosms-receiver.sock'     # fibosms-receiver.socket's ListenStream


def setup_apache_proxy(ws, host='', confs=DEBIAN_CONFS):
    receiver = Receiver(ws, socket_path=os.path.join(ws.run, 'receiver.sock')).start()
    config = apache_site('apache-reverse-proxy.conf', ws, [
        (RECEIVER_SOCKET, receiver.socket_path)])
    try:
        apache = Apache(ws, a2enmod('apache-reverse-proxy.conf'), host + config,
                        confs=confs).start()
    except BaseException:
        receiver.stop()
        raise
    front = SetUp('apache_proxy', ws, apache.port, '/fibosms/' + TOKEN, tls=True,
                  receiver=receiver)
    front.servers = [receiver, apache]
    return front


def setup_nginx(ws, more=()):
    receiver = Receiver(ws, socket_path=os.path.join(ws.run, 'receiver.sock')).start()
    config = snippet('nginx-reverse-proxy.conf', tls_replacements(ws) + [
        ('listen 443 ssl;', 'listen 127.0.0.1:{port} ssl;'),
        ('listen [::]:443 ssl;', '# (IPv6 listen line dropped: loopback only here)'),
        ('root /var/www/html;', 'root %s;' % ws.www),
        ('/var/log/nginx/', ws.logs + '/'),
        (RECEIVER_SOCKET, receiver.socket_path)] + list(more))
    try:
        nginx = Nginx(ws, config).start()
    except BaseException:
        receiver.stop()
        raise
    front = SetUp('nginx', ws, nginx.port, '/fibosms/' + TOKEN, tls=True, receiver=receiver)
    front.servers = [receiver, nginx]
    return front


class InboxCommand:
    """`python3 storage.py inbox --port PORT`, as the receiver's user (HOME its workspace)."""

    def __init__(self, ws, port=None):
        self.ws, self.port = ws, port or free_port()
        self.process = None

    def start(self):
        err = open(os.path.join(self.ws.logs, 'inbox_stderr.log'), 'ab')
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, os.path.join(self.ws.app, 'storage.py'), 'inbox', '--port',
             str(self.port)], env=dict(SERVER_ENV, HOME=self.ws.base), cwd='/',
            stdout=subprocess.DEVNULL, stderr=err, preexec_fn=self.child)
        err.close()
        wait_for_port(self.port, self.process, lambda: self.ws.log('inbox_stderr.log'))
        return self

    def child(self):
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(self.ws.gid)
            os.setuid(self.ws.uid)
        os.umask(0o077)

    def stop(self):
        stop_process(self.process)


def setup_small_server(ws):
    """The small server alone on plain HTTP, as the unit's ExecStart with --host and --port
    (what its comment says to do without the socket)."""
    receiver = Receiver(ws).start()
    front = SetUp('small_server', ws, receiver.port, '/' + TOKEN, tls=False, receiver=receiver)
    front.servers = [receiver]
    return front


STARTERS = {'mod_wsgi': setup_mod_wsgi, 'cgi': setup_cgi, 'passenger': setup_passenger,
            'apache_proxy': setup_apache_proxy, 'nginx': setup_nginx,
            'small_server': setup_small_server}


def run_push_py(url, *args, **kwargs):
    """Run deploy/push.py as a user would: (exit code, its output)."""
    argv = [sys.executable, os.path.join(DEPLOY, 'push.py'), url] + list(args)
    if kwargs.get('cafile'):
        argv += ['--cafile', kwargs['cafile']]
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return done.returncode, done.stdout.decode('utf-8', 'replace')


# -- Stand-ins for the business's application -------------------------------------------------

class Request:
    def __init__(self, method, path, headers, body):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def __repr__(self):
        return '<Request %s %s %r>' % (self.method, self.path, self.body[:100])


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class Application:
    """Application(cert=None) listening at .url; set .status, .body, .headers (a list),
    .hang (seconds to wait before answering, cut short by .release), .trickle (send the
    status line a byte at a time, 10 a second) or .huge (a body of that many bytes).
    .requests holds what came in; .arrived is set at each request. stop() ends it."""

    def __init__(self, cert=None):
        self.status, self.body, self.headers = 204, b'', []
        self.hang, self.trickle, self.huge = 0.0, False, 0
        self.requests = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                app.handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, format, *args):
                pass

        self.server = ThreadingServer(('127.0.0.1', 0), Handler)
        scheme = 'http'
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = 'https'
        self.port = self.server.server_address[1]
        self.url = '%s://127.0.0.1:%d/hook' % (scheme, self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def handle(self, handler):
        length = int(handler.headers.get('Content-Length') or 0)
        body = handler.rfile.read(length)
        self.requests.append(Request(handler.command, handler.path, dict(handler.headers), body))
        self.arrived.set()
        if self.hang:
            self.release.wait(self.hang)
        try:
            if self.trickle:
                deadline = time.monotonic() + 30
                for byte in b'HTTP/1.1 200 OK\r\n' * 50:
                    if self.release.is_set() or time.monotonic() > deadline:
                        break
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(0.1)
                return
            handler.send_response(self.status)
            for name, value in self.headers:
                handler.send_header(name, value)
            size = self.huge or len(self.body)
            handler.send_header('Content-Length', str(size))
            handler.end_headers()
            if self.huge:
                chunk = b'x' * 65536
                for _ in range(0, self.huge, len(chunk)):
                    handler.wfile.write(chunk)
            else:
                handler.wfile.write(self.body)
        except OSError:     # the receiver hung up: what a bounded reader does
            pass

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class Consumer:
    """deploy/consumer.php served by Debian's php-cli (`php -S 127.0.0.1:PORT`), with the
    secret and database in its environment, as SetEnv would give them. .log() is its stderr
    (the error log, in the file log_path); .url its address. With default_db, the page is
    left to choose its database (`db` is where it should land)."""

    def __init__(self, secret, db, log_path, port=None, script=None, default_db=False,
                 env=None):
        need('php')
        script = script or os.path.join(DEPLOY, 'consumer.php')
        self.db, self.log_path, self.port = db, log_path, port or free_port()
        self.url = 'http://127.0.0.1:%d/consumer.php' % self.port
        environ = {'PATH': os.environ.get('PATH', '/usr/bin:/bin')}
        if secret is not None:
            environ['FIBOSMS_FORWARD_SECRET'] = secret
        if not default_db:
            environ['FIBOSMS_CONSUMER_DB'] = db
        environ.update(env or {})
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                ['php', '-S', '127.0.0.1:%d' % self.port, '-t', os.path.dirname(script),
                 script], env=environ, stdout=subprocess.DEVNULL, stderr=log, cwd='/')
        wait_for_port(self.port, self.process, self.log)

    def log(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def rows(self, table):
        if not os.path.exists(self.db):
            return []
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute('SELECT * FROM %s' % table).fetchall()
        finally:
            conn.close()

    def stop(self):
        stop_process(self.process, 10)


# -- A real browser ---------------------------------------------------------------------------

def browser(downloads):
    """Debian's chromium, headless, driven by selenium through Debian's chromedriver (no
    driver or browser downloaded): it trusts no test certificate, so TLS errors are ignored
    for 127.0.0.1; files it downloads go to `downloads`."""
    need('chromium', 'chromedriver')
    try:
        from selenium import webdriver
    except ImportError:
        (pytest.fail if os.environ.get('CI') else pytest.skip)(
            'needs selenium (python3 -m pip install -r requirements-dev.txt)')
    options = webdriver.ChromeOptions()
    options.binary_location = PARTS['chromium'][0]
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--ignore-certificate-errors',
                 '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--window-size=412,900',
                 '--lang=en-US'):
        options.add_argument(flag)
    options.add_experimental_option('prefs', {
        'download.default_directory': downloads, 'download.prompt_for_download': False,
        'intl.accept_languages': 'en-US,en'})
    try:    # selenium 4
        from selenium.webdriver.chrome.service import Service
        driver = webdriver.Chrome(service=Service(PARTS['chromedriver'][0]), options=options)
    except (ImportError, TypeError):   # selenium 3 (Python 3.6, 3.7)
        driver = webdriver.Chrome(executable_path=PARTS['chromedriver'][0], options=options)
    driver.set_page_load_timeout(30)
    return driver
