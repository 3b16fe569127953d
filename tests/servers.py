"""Real servers for the deploy tests, built from the snippets in deploy/ and run on 127.0.0.1.

Each family of tests (test_deploy_*.py) gets one Workspace: a private folder with the code
(copies of receiver.py and storage.py), a data folder owned by the user the receiver runs as,
a document root, logs and a TLS certificate. It then starts one real server in it:

- Apache 2.4 (Debian's apache2 binary and modules) as a private instance: ServerRoot, PidFile,
  logs and sockets in the workspace, one free 127.0.0.1 port, a small "host" configuration
  written here (what Debian's apache2.conf or a hosting provider supplies) and the SHIPPED
  snippet appended to it, changed only on the lines it marks CHANGE (port, certificate,
  secret) and in its paths (snippet() fails when one of those lines is no longer there);
- nginx the same way;
- receiver.py's own server, started with the ExecStart line of the shipped systemd unit.

A server that does not start raises with its error log: these tests fail, never skip.

The checks at the bottom (check_*) are the behaviours every way of deploying must have; each
family's test module calls them, one test per behaviour.
"""
import grp
import os
import pwd
import select
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, 'deploy')
APACHE_MODULES = '/usr/lib/apache2/modules'
PASSENGER_ROOT = '/usr/lib/ruby/vendor_ruby/phusion_passenger/locations.ini'
SYSTEM_PYTHON = '/usr/bin/python3'     # what mod_wsgi, Passenger and the unit file run
START_TIMEOUT = 20.0                   # seconds for a server to accept connections
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


# -- Workspace --------------------------------------------------------------------------------

def run_user():
    """(user, group) the receiver runs as: www-data when we are root, else ourselves."""
    if os.geteuid() == 0:
        return 'www-data', 'www-data'
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Workspace:
    """A private folder tree for one server; remove() deletes it.

    Not pytest's tmp_path: that lives under a 0700 folder of root's, which www-data, the user
    the receiver runs as, could not enter.
    """

    def __init__(self, name):
        self.base = tempfile.mkdtemp(prefix='fibosms-%s-' % name)
        os.chmod(self.base, 0o755)
        self.user, self.group = run_user()
        self.uid = pwd.getpwnam(self.user).pw_uid
        self.gid = grp.getgrnam(self.group).gr_gid
        self.app = self.folder('app')                 # receiver.py, storage.py, forward.py
        self.www = self.folder('www')                 # DocumentRoot
        self.logs = self.folder('logs')
        self.run = self.folder('run')
        self.data = self.folder('data', owned=True, mode=0o700)
        self.db = os.path.join(self.data, 'messages.sqlite3')
        for name in ('receiver.py', 'storage.py', 'forward.py', 'smallserver.py'):
            self.copy(os.path.join(ROOT, name), os.path.join(self.app, name), 0o644)
        self.cert, self.key = make_certificate(self.folder('tls', mode=0o700))

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
        """The text of logs/name ('' while it does not exist)."""
        try:
            with open(os.path.join(self.logs, name), encoding='utf-8', errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

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


def cgi_script(code, db, more=()):
    """deploy/cgi/receiver.cgi with its CHANGE lines filled in (the code's folder, the
    database, TOKEN), and `more` (old, new) pairs."""
    return snippet('cgi/receiver.cgi', [
        ("os.path.expanduser('~/fibosms')", repr(code)),
        ("os.path.expanduser('~/fibosms-data/messages.sqlite3')", repr(db)),
        ("'change-me-to-a-long-random-secret'", repr(TOKEN))] + list(more))


def mod_wsgi_config(ws, more=()):
    """deploy/apache-mod_wsgi.conf for workspace `ws`: its port, folders, user, certificate and
    TOKEN, and `more` (old, new) pairs."""
    return snippet('apache-mod_wsgi.conf', tls_replacements(ws) + [
        ('<VirtualHost *:443>', '<VirtualHost *:{port}>'),
        ('DocumentRoot /var/www/html', 'DocumentRoot %s' % ws.www),
        ('user=fibosms group=fibosms', 'user=%s group=%s' % (ws.user, ws.group)),
        ('/srv/fibosms/app', ws.app),
        ('/srv/fibosms/data', ws.data),
        ('change-me-to-a-long-random-secret', TOKEN)] + list(more))


def tls_replacements(ws):
    """The certificate lines of the shipped Apache and nginx snippets, pointed at ours."""
    return [('/etc/letsencrypt/live/sms.example.com/fullchain.pem', ws.cert),
            ('/etc/letsencrypt/live/sms.example.com/privkey.pem', ws.key)]


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


# -- Apache -----------------------------------------------------------------------------------

BASE_MODULES = ('mpm_event', 'authz_core', 'authz_host', 'mime', 'dir', 'alias', 'env',
                'setenvif', 'ssl', 'socache_shmcb')

APACHE_HOST_CONFIG = """\
# The host's part: what Debian's apache2.conf and ports.conf (or a hosting provider) supply.
ServerRoot {base}
PidFile {run}/httpd.pid
DefaultRuntimeDir {run}
Mutex file:{run} default
ErrorLog {logs}/error.log
LogLevel warn
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
User {user}
Group {group}
Timeout 30
Define APACHE_LOG_DIR {logs}
{modules}
TypesConfig /etc/mime.types
LogFormat "%h %l %u %t \\"%r\\" %>s %O \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
CustomLog {logs}/host_access.log combined
SSLSessionCache shmcb:{run}/ssl_scache(512000)
<Directory />
    Options FollowSymLinks
    AllowOverride None
    Require all denied
</Directory>
"""


class Apache:
    """A private Apache: Apache(ws, modules, site_config).start() ... stop()."""

    def __init__(self, ws, modules, site_config, port=None):
        self.ws = ws
        self.port = port or free_port()
        self.process = None
        lines = ['LoadModule %s_module %s/mod_%s.so' % (m, APACHE_MODULES, m)
                 for m in BASE_MODULES + tuple(modules)]
        host = APACHE_HOST_CONFIG.format(
            base=ws.base, run=ws.run, logs=ws.logs, port=self.port, user=ws.user,
            group=ws.group, modules='\n'.join(lines))
        self.config = ws.write(os.path.join(ws.base, 'httpd.conf'),
                               host + '\n' + site_config.replace('{port}', str(self.port)))

    def start(self):
        apache = shutil.which('apache2', path=SERVER_ENV['PATH'])
        if apache is None:
            raise RuntimeError('apache2 is not installed (apt-get install apache2)')
        out = open(os.path.join(self.ws.logs, 'apache_stdout.log'), 'wb')
        self.process = subprocess.Popen(
            [apache, '-f', self.config, '-DFOREGROUND'], env=SERVER_ENV, cwd=self.ws.base,
            stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for_port(self.port, self.process, lambda: (
            'Apache (%s) did not start.\n--- stdout/stderr:\n%s\n--- error.log:\n%s' % (
                self.config, self.ws.log('apache_stdout.log'), self.ws.log('error.log'))))
        return self

    def stop(self):
        stop_process(self.process)


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
    """Stop a server we started: SIGTERM, then SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- nginx ------------------------------------------------------------------------------------

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
        self.ws = ws
        self.port = port or free_port()
        self.process = None
        site = ws.write(os.path.join(ws.base, 'site.conf'),
                        site_config.replace('{port}', str(self.port)))
        temp = ws.folder('nginx_temp', owned=True, mode=0o700)
        self.config = ws.write(os.path.join(ws.base, 'nginx.conf'), NGINX_HOST_CONFIG.format(
            user=ws.user, group=ws.group, run=ws.run, logs=ws.logs, temp=temp, site=site))

    def start(self):
        nginx = shutil.which('nginx', path=SERVER_ENV['PATH'])
        if nginx is None:
            raise RuntimeError('nginx is not installed (apt-get install nginx)')
        out = open(os.path.join(self.ws.logs, 'nginx_stdout.log'), 'wb')
        self.process = subprocess.Popen(
            [nginx, '-p', self.ws.base, '-e', os.path.join(self.ws.logs, 'error.log'),
             '-c', self.config, '-g', 'daemon off;'],
            env=SERVER_ENV, cwd=self.ws.base, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        wait_for_port(self.port, self.process, lambda: (
            'nginx (%s) did not start.\n--- stdout/stderr:\n%s\n--- error.log:\n%s' % (
                self.config, self.ws.log('nginx_stdout.log'), self.ws.log('error.log'))))
        return self

    def stop(self):
        stop_process(self.process)


# -- receiver.py's own server, as the systemd unit starts it ---------------------------------

def unit_setting(name):
    """The value of `name=` in deploy/fibosms-receiver.service (the last one, as systemd)."""
    value = None
    for line in snippet('fibosms-receiver.service').splitlines():
        if line.startswith(name + '='):
            value = line[len(name) + 1:]
    if value is None:
        raise AssertionError('deploy/fibosms-receiver.service has no %s=' % name)
    return value


def unit_environment(ws):
    """The environment the unit gives the receiver: Environment= and the shipped
    EnvironmentFile (deploy/fibosms-receiver.env) with our secret in it."""
    env = dict(SERVER_ENV, HOME=ws.data, USER=ws.user)
    for assignment in shlex.split(unit_setting('Environment')):
        name, _, value = assignment.partition('=')
        env[name] = value
    text = snippet('fibosms-receiver.env', [('change-me-to-a-long-random-secret', TOKEN)])
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith('#'):
            name, _, value = line.partition('=')
            env[name.strip()] = value.strip()
    return env


class Receiver:
    """`python3 receiver.py ...` started from the unit's ExecStart, as the unit's user would
    run it (www-data standing in for the DynamicUser), with only our paths and port swapped in."""

    def __init__(self, ws, port=None):
        self.ws = ws
        self.port = port or free_port()
        self.process = None
        self.listening = None
        self.argv = shlex.split(unit_setting('ExecStart')
                                .replace('/opt/fibosms', ws.app)
                                .replace('/var/lib/fibosms', ws.data))
        self.argv[self.argv.index('--port') + 1] = str(self.port)
        self.stderr_path = os.path.join(ws.logs, 'receiver_stderr.log')

    def start(self):
        err = open(self.stderr_path, 'wb')
        self.process = subprocess.Popen(
            self.argv, env=unit_environment(self.ws), cwd='/', stdout=subprocess.PIPE,
            stderr=err, preexec_fn=self.drop_privileges)
        err.close()
        # "Listening on http://HOST:PORT/" and "Database: PATH", read from the pipe's file
        # descriptor (select() knows nothing of a file object's buffer) with a deadline.
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
        wait_for_port(self.port, self.process, lambda: (
            '%s did not start.\n--- stdout:\n%s\n--- stderr:\n%s' % (
                ' '.join(self.argv), ''.join(lines), self.ws.log('receiver_stderr.log'))))
        return self

    def drop_privileges(self):
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(self.ws.gid)
            os.setuid(self.ws.uid)
        os.umask(0o077)   # the unit's UMask=

    def stop(self):
        stop_process(self.process)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


# -- HTTP -------------------------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return '<Response %s %r>' % (self.status, self.body[:200])


def get(url, cafile=None, timeout=20.0):
    """GET `url` (trusting `cafile` for https); the Response, whatever its status."""
    context = ssl.create_default_context(cafile=cafile) if url.startswith('https:') else None
    request = urllib.request.Request(url, headers={'User-Agent': 'fibosms-deploy-tests'})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, exc.headers, exc.read())


def push_query(message, phone, guid):
    """The push's query string, encoded as FiboSMSGateway does (UTF-8, see deploy/push.py)."""
    return urllib.parse.urlencode([('message', message), ('phone', phone), ('guid', guid)],
                                  encoding='utf-8')


def new_guid():
    return 'test-' + str(uuid.uuid4())


def stored(db, guid):
    """The rows stored for `guid`, as dicts."""
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute('SELECT * FROM messages WHERE guid = ?', (guid,))]
    finally:
        conn.close()


def run_push_py(url, *args, **kwargs):
    """Run deploy/push.py as a user would: (exit code, its output)."""
    env = dict(os.environ)
    if kwargs.get('cafile'):
        env['SSL_CERT_FILE'] = kwargs['cafile']   # OpenSSL's own override of its CA bundle
    done = subprocess.run(
        [sys.executable, os.path.join(DEPLOY, 'push.py'), url] + list(args),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return done.returncode, done.stdout.decode('utf-8', 'replace')


# -- The checks every deployment must pass ----------------------------------------------------

class Site:
    """A running deployment as the checks see it.

    base: the page's URL without the secret (e.g. https://127.0.0.1:PORT/fibosms/);
    db: the database file the deployment's settings name; cafile: the certificate to trust;
    folder_url: the URL of the public folder holding place_decoys()'s files;
    forbidden: further URLs that must not give anything away; access_log: () -> its text;
    default_db: where the database would be had the settings not reached the app.
    """

    def __init__(self, base, db, access_log, folder_url, cafile=None, forbidden=(),
                 default_db=None):
        self.base, self.db, self.access_log = base, db, access_log
        self.folder_url, self.cafile = folder_url, cafile
        self.forbidden, self.default_db = list(forbidden), default_db

    @property
    def url(self):
        return self.base + TOKEN

    def push(self, message=VIETNAMESE, phone=PHONE, guid=None, url=None):
        guid = guid or new_guid()
        response = get('%s?%s' % (url or self.url, push_query(message, phone, guid)),
                       self.cafile)
        return guid, response


def check_vietnamese_push_stored(site):
    guid, response = site.push()
    assert (response.status, response.body) == (200, b'<Status>2</Status>'), response
    assert response.headers['Content-Type'] == 'text/xml; charset=utf-8'
    [row] = stored(site.db, guid)
    assert (row['message'], row['phone'], row['charset']) == (VIETNAMESE, PHONE, 'utf-8')


def check_duplicate_guid_one_row(site):
    guid, first = site.push()
    _, again = site.push(guid=guid)
    assert first.body == again.body == b'<Status>2</Status>', (first, again)
    [row] = stored(site.db, guid)
    assert row['deliveries'] == 2


def check_token_in_path_works(site):
    assert site.url.rstrip('/').rpartition('/')[2] == TOKEN
    guid, response = site.push(message='token in the path')
    assert (response.status, response.body) == (200, b'<Status>2</Status>'), response
    assert len(stored(site.db, guid)) == 1


def check_wrong_token_refused(site):
    guid, response = site.push(url=site.base + WRONG_TOKEN)
    assert (response.status, response.body) == (403, b'<Status>1</Status>'), response
    assert stored(site.db, guid) == []
    guid, response = site.push(url=site.base.rstrip('/'))     # no secret at all
    assert response.status in (403, 404) and response.body != b'<Status>2</Status>', response
    assert stored(site.db, guid) == []


def check_settings_reach_app(site):
    guid, response = site.push(message='settings')
    assert response.body == b'<Status>2</Status>', response
    assert len(stored(site.db, guid)) == 1        # in the file the settings name
    if site.default_db:
        assert not os.path.exists(site.default_db), 'the default database was used'


def check_files_not_downloadable(site):
    urls = list(site.forbidden)
    if site.folder_url:   # a folder the server serves files from, with place_decoys() in it
        assert get(site.folder_url + 'hello.txt', site.cafile).status == 200
        urls += [site.folder_url + name for name in DECOYS]
    for url in urls:
        response = get(url, site.cafile)
        assert response.status in (403, 404), (url, response)
        assert SQLITE_MAGIC not in response.body and TOKEN.encode() not in response.body, url


def check_access_log_has_no_query(site):
    guid, response = site.push(message='log check', phone='84987654321')
    assert response.body == b'<Status>2</Status>', response
    site.push(url=site.base + WRONG_TOKEN)
    deadline = time.monotonic() + 5
    log = site.access_log()
    while log.count('\n') < 2 and time.monotonic() < deadline:  # written after the answer
        time.sleep(0.05)
        log = site.access_log()
    assert log.count('\n') >= 2, 'the pushes were not logged: %r' % log
    for secret in ('?', 'message=', 'log check', 'log+check', guid, '84987654321', TOKEN,
                   WRONG_TOKEN):
        assert secret not in log, (secret, log)


def check_push_py_succeeds(site):
    guid = new_guid()
    code, output = run_push_py(site.url, '--phone', PHONE, '--message', VIETNAMESE,
                               '--guid', guid, cafile=site.cafile)
    assert code == 0, output
    assert 'HTTP 200 <Status>2</Status>: stored' in output and 'OK:' in output, output
    assert TOKEN not in output, output
    [row] = stored(site.db, guid)
    assert row['message'] == VIETNAMESE
