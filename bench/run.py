#!/usr/bin/env python3
"""What one FiboSMS push costs: the receiver against the PHP page a business would otherwise write.

    python3 bench/run.py [--quick] [--parts cgi,inprocess,servers,inbox] [--code DIR]

Debian packages: apache2, libapache2-mod-wsgi-py3, php-fpm, php-cgi, php-sqlite3, wrk,
hyperfine, openssl. The peer is bench/peers/receiver.php: the same protocol, table rule (UNIQUE
guid, checked and inserted in one BEGIN IMMEDIATE transaction) and durability (WAL,
synchronous=FULL), written as a plain page: PDO, a connection per request, its secret and
database in SetEnv (the environment). The receiver is set up as shipped: every .py file
users upload (tests/support.py's CODE) in a code folder, and its settings (the secret) in
fibosms-data/settings.env, deploy/settings.env's text, read at every push; the database
beside it. The servers are tests/support.py's.

1. CGI processes, timed by hyperfine: one push (a first delivery: the row is deleted before
   each run) as ``python3 receiver.py`` (HOME set, so that it finds ~/fibosms-data/settings.env,
   as on a shared host) and as deploy/cgi/receiver.cgi (CODE_DIR and CONFIG filled in by
   support.cgi_script), run by its first line as a web server runs it, with the environment a
   web server gives a CGI script, against ``python3 -c pass``; and ``php-cgi receiver.php``.
   Wall time (hyperfine's median) and CPU time (its mean user + system time).
2. In-process: pushes per second through the WSGI callable (make_app(config=its settings
   file)) against the floor: raw sqlite3 inserts of the same row (storage.INSERT_MESSAGE, the
   schema of storage.MIGRATIONS) with the same durability, one BEGIN IMMEDIATE ... COMMIT and
   so one fsync per push, over one open connection. On the disk and on tmpfs (where a commit
   waits for no disk, leaving the Python each costs), and pushes forwarded, signed, to an
   application on 127.0.0.1. This part runs in the Python that runs this script: run it with
   /usr/bin/python3, what mod_wsgi runs (the results name it).
3. Servers: four private Apache instances on 127.0.0.1, one per page: receiver.py under
   mod_wsgi (support.setup_mod_wsgi: deploy/apache-mod_wsgi.conf, with SSLEngine off) and
   receiver.php under php-fpm (proxy_fcgi; Debian's pool settings); deploy/cgi/ under mod_cgid
   (support.setup_cgi: its .htaccess and receiver.cgi, as on a shared host) and receiver.php
   under php-cgi (mod_actions, as Debian's php-cgi.conf shows). wrk (bench/mix.lua) sends new
   guids, or a retry-heavy mix where 90% of pushes resend one of 100 stored pushes byte for
   byte. Pushes per second, p50/p99 latency, answers that were not <Status>2</Status>, and CPU
   per push: the user + system time, over the run, of a cgroup holding the server and every
   process it starts (Apache, mod_wsgi's daemon, php-fpm, each CGI process), divided by the
   pushes wrk counted. Each server's error logs (and receiver.log) are summed up in the
   results before it is removed. Needs root (for the cgroups, and the servers' users).
4. The inbox (inbox.py) on a database of 1,000,000 messages (10,000 phones, one message a
   minute, 2% failed): the server time of one page (the WSGI call, in-process, logged in),
   median of its runs: the first page, the next page from the middle, one phone, two days,
   one phone over two days, the failed ones, and a text search that finds nothing (which
   stops at its budget, inbox.SEARCH_BUDGET).

The machine is assumed busy: what is compared takes turns round by round, and every figure is the
median over rounds (of each measure, and of each round's ratio). The table is printed and
written with every sample to bench/results/ (latest.json and a dated copy). Every part measures
the .py files as they were when the run started (the results name them, their sha256 and
which were not committed). --code DIR takes them from DIR, to measure a change before it is
applied.
"""
import argparse
import collections
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from statistics import median

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
try:
    import pytest  # noqa: F401  (tests/support.py imports it, for need()'s skip)
except ImportError:     # /usr/bin/python3 without python3-pytest: need() then stops the bench
    def _missing(reason):
        raise SystemExit('bench/run.py: ' + reason)
    sys.modules['pytest'] = types.SimpleNamespace(skip=_missing, fail=_missing)
import support  # noqa: E402  (tests/support.py: workspaces, private Apache instances)

PYTHON = '/usr/bin/python3'     # what Debian's mod_wsgi and a shared host's CGI run
PHP_PAGE = os.path.join(HERE, 'peers', 'receiver.php')
MIX = os.path.join(HERE, 'mix.lua')
FORWARD_SECRET = 'whsec_' + 'MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY='  # 32 bytes
TOKEN = support.TOKEN
DONE = support.DONE
PAIRS = (('mod_wsgi', 'php-fpm'), ('cgi', 'php-cgi'))   # receiver.py, its PHP peer
DELETE_ROWS = ('%s -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); '
               'c.execute(\'DELETE FROM messages\'); c.commit(); c.close()" %s')


def push_query(guid):
    """A push as bench/mix.lua sends it: its message follows from its guid, so a retry is the
    very request that was stored."""
    return 'guid=%s&phone=84912345678&message=Xin+chao+%s' % (guid, guid)


def say(text):
    print(text, file=sys.stderr, flush=True)


def copy_code(code, folder):
    """Every .py file users upload (support.CODE; with --code, DIR's), and no other, into
    `folder`, mode 644."""
    names = support.CODE if os.path.realpath(code) == os.path.realpath(ROOT) else sorted(
        name for name in os.listdir(code) if name.endswith('.py'))
    for name in os.listdir(folder):
        if name.endswith('.py'):
            os.remove(os.path.join(folder, name))
    for name in names:
        shutil.copyfile(os.path.join(code, name), os.path.join(folder, name))
        os.chmod(os.path.join(folder, name), 0o644)


def data_folder(place, name, *lines):
    """A data folder of this process's user, `place`/`name` (mode 700), holding settings.env
    (deploy/'s text, TOKEN the secret, `lines` added; mode 600), as support.Workspace writes
    it for the receiver's user: the settings file's path. The database goes beside it."""
    folder = os.path.join(place, name)
    os.mkdir(folder, 0o700)
    config = os.path.join(folder, 'settings.env')
    text = support.snippet('settings.env', [('change-me-to-a-long-random-secret', TOKEN)])
    with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'w') as f:
        f.write(text + ''.join(line + '\n' for line in lines))
    return config


# -- 1. CGI processes -------------------------------------------------------------------------

def bench_cgi(code, rounds, runs):
    ws = support.Workspace('bench-cgi')
    try:
        return cgi_rounds(ws, code, rounds, runs)
    finally:
        ws.remove()


def cgi_rounds(ws, code, rounds, runs):
    # hyperfine runs each process as this user (root), not as the workspace's: the data folder
    # and its settings file are made this user's, as support.setup_cgi does for suEXEC.
    os.chown(ws.data, os.geteuid(), os.getegid())
    ws.settings()
    copy_code(code, ws.app)
    script = ws.write(os.path.join(ws.folder('site', 'fibosms'), 'receiver.cgi'),
                      support.cgi_script(ws), mode=0o755)
    db, php_db = ws.db, os.path.join(ws.folder('php', mode=0o700), 'php.sqlite3')
    env = {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
           'QUERY_STRING': push_query('cgi-1'), 'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '80',
           'SERVER_PROTOCOL': 'HTTP/1.1', 'SERVER_SOFTWARE': 'Apache', 'REMOTE_ADDR': '127.0.0.1',
           'SCRIPT_NAME': '/fibosms', 'PATH_INFO': '/' + TOKEN}
    groups = [  # (environment, database, {name: command}); php-cgi needs its own database
        # The receiver's settings: ~/fibosms-data/settings.env, or CONFIG in receiver.cgi.
        (dict(env, HOME=ws.base), db, {
            'python3 -c pass': '%s -c pass' % PYTHON,
            'python3 receiver.py': '%s %s/receiver.py' % (PYTHON, ws.app),
            'receiver.cgi': script}),   # its first line names PYTHON
        # The PHP page's, as SetEnv gives them.
        (dict(env, FIBOSMS_TOKEN=TOKEN, FIBOSMS_DB=php_db, SCRIPT_FILENAME=PHP_PAGE,
              REDIRECT_STATUS='200'), php_db,
         {'php-cgi receiver.php': 'php-cgi %s' % PHP_PAGE})]
    for group_env, _, commands in groups:       # each answers 2 (and creates its database)
        for name, command in commands.items():
            out = subprocess.run(command.split(), env=group_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            if 'pass' not in name and not out.stdout.endswith(DONE):
                raise RuntimeError('%s answered %r %r %s' % (name, out.stdout, out.stderr,
                                                            ws.receiver_log()))
    samples = {}
    for r in range(rounds):
        for group_env, group_db, commands in (groups if r % 2 else groups[::-1]):
            names = list(commands)[r % len(commands):] + list(commands)[:r % len(commands)]
            export = os.path.join(ws.base, 'hyperfine.json')
            done = subprocess.run(
                ['hyperfine', '-N', '--style', 'none', '--warmup', '2', '--runs', str(runs),
                 '--prepare', DELETE_ROWS % (PYTHON, group_db), '--export-json', export]
                + [commands[n] for n in names], env=dict(group_env, PATH=os.environ['PATH']),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True)
            if done.returncode != 0:
                raise RuntimeError('hyperfine: %s' % done.stderr)
            with open(export) as f:
                for name, result in zip(names, json.load(f)['results']):
                    samples.setdefault(name, []).append(
                        {'wall_ms': result['median'] * 1e3,
                         'cpu_ms': (result['user'] + result['system']) * 1e3})
    result = {'rounds': rounds, 'runs': runs, 'samples': samples}
    for name, rows in samples.items():
        result[name] = {key: median([row[key] for row in rows]) for key in ('wall_ms', 'cpu_ms')}
        result[name].update({key.replace('ms', 'x_pass'): median(
            [row[key] / base[key] for row, base in zip(rows, samples['python3 -c pass'])])
            for key in ('wall_ms', 'cpu_ms')})
    return result


# -- 2. In-process ----------------------------------------------------------------------------

def bench_inprocess(work, code, rounds, batch):
    """Pushes through the WSGI callable against raw inserts, on the disk and on tmpfs (where a
    commit waits for no disk, leaving the Python each costs), and pushes forwarded."""
    import io
    import sqlite3
    sys.path.insert(0, code)
    import receiver
    import storage
    memory = tempfile.mkdtemp(prefix='fibosms-bench-', dir='/dev/shm')
    base = {'REQUEST_METHOD': 'GET', 'SCRIPT_NAME': '/fibosms', 'PATH_INFO': '/' + TOKEN,
            'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '80', 'SERVER_PROTOCOL': 'HTTP/1.1',
            'REMOTE_ADDR': '127.0.0.1', 'wsgi.version': (1, 0), 'wsgi.url_scheme': 'http',
            'wsgi.input': io.BytesIO(b''), 'wsgi.errors': sys.stderr, 'wsgi.multithread': True,
            'wsgi.multiprocess': True, 'wsgi.run_once': False}

    def database(place, name):   # the floor's, in a folder of its own
        os.mkdir(os.path.join(place, name), 0o700)
        return os.path.join(place, name, 'messages.sqlite3')

    def app(place, name, *lines):   # the receiver's: its settings file, the database beside it
        return receiver.make_app(config=data_folder(place, name, *lines))

    def pusher(app):
        def push(guid):
            environ = dict(base, QUERY_STRING=push_query(guid))
            if b''.join(app(environ, lambda s, h: None)) != DONE:
                raise RuntimeError('push %s not stored' % guid)
        return push

    def inserter(path):
        floor = sqlite3.connect(path, isolation_level=None)
        floor.execute('PRAGMA synchronous = FULL')
        floor.execute('PRAGMA journal_mode = WAL')
        for statement in storage.MIGRATIONS[0]:
            floor.execute(statement)

        def insert(guid):   # the row storage.deliver inserts for this push, without a hook
            stamp = storage.utc_iso()
            floor.execute('BEGIN IMMEDIATE')
            floor.execute(storage.INSERT_MESSAGE, (
                guid, '84912345678', '84912345678', 'Xin chao ' + guid, 'utf-8',
                push_query(guid), '{}', '127.0.0.1', stamp, stamp, 'processed', None, None,
                stamp))
            floor.execute('COMMIT')
        return insert

    # Forwarded: signed, to an application on 127.0.0.1 that answers 204.
    application, url = local_application()
    runs = {
        'app': pusher(app(work, 'app')),
        'floor': inserter(database(work, 'floor')),
        'forward': pusher(app(work, 'forward', 'FIBOSMS_FORWARD_URL=' + url,
                              'FIBOSMS_FORWARD_SECRET=' + FORWARD_SECRET)),
        'app_tmpfs': pusher(app(memory, 'app')),
        'floor_tmpfs': inserter(database(memory, 'floor'))}

    def per_second(fn, prefix):
        start = time.perf_counter()
        for i in range(batch):
            fn('%s-%d' % (prefix, i))
        return batch / (time.perf_counter() - start)

    for name, fn in runs.items():
        per_second(fn, 'warm-' + name)
    rates = {name: [] for name in runs}
    for r in range(rounds):
        names = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        for name in names:
            rates[name].append(per_second(runs[name], '%s-%d' % (name, r)))
    application.shutdown()
    shutil.rmtree(memory)
    result = {'rounds': rounds, 'batch': batch, 'samples': rates,
              'python': '%s %s, SQLite %s' % (sys.executable, sys.version.split()[0],
                                              sqlite3.sqlite_version)}
    result.update(('%s_per_s' % name, median(rates[name])) for name in runs)
    for place in ('', '_tmpfs'):
        result['ratio' + place] = median([a / f for a, f in zip(rates['app' + place],
                                                                rates['floor' + place])])
    return result


def local_application():
    """An application on 127.0.0.1 that takes every forwarded message with 204: (server, URL)."""
    import http.server
    import threading

    class Accept(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers['Content-Length']))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, 'http://127.0.0.1:%d/sms' % server.server_address[1]


# -- 3. Servers -------------------------------------------------------------------------------

def site_mod_wsgi(ws):
    # Loopback HTTP: TLS would cost every page the same.
    front = support.setup_mod_wsgi(ws, more=[('SSLEngine on', 'SSLEngine off')])
    return front.servers, 'http://127.0.0.1:%d%s' % (front.port, front.page)


def site_cgi(ws):
    # On a shared host the script's owner runs it, and Python caches the bytecode of the .py
    # files at the first push; here the code is root's: cache it now.
    subprocess.run([PYTHON, '-m', 'compileall', '-q', ws.app], check=True)
    front = support.setup_cgi(ws)
    return front.servers, front.url


# The PHP pages: served from the DocumentRoot, their settings in SetEnv.
PHP_SITE = """\
DocumentRoot {www}
<Directory {www}>
    Options SymLinksIfOwnerMatch
    AllowOverride All
    Require all granted
</Directory>
SetEnv FIBOSMS_TOKEN %s
SetEnv FIBOSMS_DB %s
<FilesMatch "\\.php$">
    SetHandler %s
</FilesMatch>
"""
# Debian's pool.d/www.conf, but for the socket and log paths.
FPM_CONFIG = """\
[global]
pid = {run}/php-fpm.pid
error_log = {logs}/php-fpm.log
[www]
user = {user}
group = {group}
listen = {run}/php-fpm.sock
listen.owner = {user}
listen.group = {group}
pm = dynamic
pm.max_children = 5
pm.start_servers = 2
pm.min_spare_servers = 1
pm.max_spare_servers = 3
"""


class Process:
    """A process this bench started, stopped as the servers are."""

    def __init__(self, process):
        self.process = process

    def stop(self):
        support.stop_process(self.process)


def php_site(ws, handler):
    ws.copy(PHP_PAGE, ws.folder('www', 'fibosms') + '/receiver.php', 0o644)
    return PHP_SITE.format(www=ws.www) % (TOKEN, ws.db, handler)


def site_php_fpm(ws):
    config = ws.write(os.path.join(ws.base, 'php-fpm.conf'), FPM_CONFIG.format(
        run=ws.run, logs=ws.logs, user=ws.user, group=ws.group))
    socket = os.path.join(ws.run, 'php-fpm.sock')
    fpm = Process(subprocess.Popen(
        [sorted(glob.glob('/usr/sbin/php-fpm*'))[-1], '--nodaemonize', '--fpm-config', config],
        env=support.SERVER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + support.START_TIMEOUT
    while not os.path.exists(socket):
        if fpm.process.poll() is not None or time.monotonic() > deadline:
            fpm.stop()
            raise RuntimeError('php-fpm did not start:\n' + ws.log('php-fpm.log'))
        time.sleep(0.05)
    handler = '"proxy:unix:%s|fcgi://localhost"' % socket
    try:
        apache = support.Apache(ws, ['proxy', 'proxy_fcgi'], php_site(ws, handler)).start()
    except BaseException:
        fpm.stop()
        raise
    return [fpm, apache], 'http://127.0.0.1:%d/fibosms/receiver.php/%s' % (apache.port, TOKEN)


def site_php_cgi(ws):
    site = ('ScriptSock %s/cgid.sock\nScriptAlias /php-bin/ /usr/lib/cgi-bin/\n'
            '<Directory /usr/lib/cgi-bin>\n    Require all granted\n</Directory>\n'
            'Action application/x-httpd-php /php-bin/php\n' % ws.run)
    apache = support.Apache(ws, ['cgid', 'actions'],
                            site + php_site(ws, 'application/x-httpd-php')).start()
    return [apache], 'http://127.0.0.1:%d/fibosms/receiver.php/%s' % (apache.port, TOKEN)


class ControlGroup:
    """A cgroup of its own for one server: ``with group:`` puts the processes started inside
    in it; ``group.cpu_seconds()`` is their user + system time, of every process they start
    too. (proc(5)'s cutime does not do: mod_cgid's daemon ignores SIGCHLD, which leaves the
    CGI processes out of it.) cgroup v2's cpu.stat, else v1's cpuacct; needs root."""

    def __init__(self, name):
        with open('/proc/self/cgroup') as f:   # 0::/path (v2), N:cpu,cpuacct:/path (v1)
            mine = dict(line.rstrip('\n').split(':', 2)[1:] for line in f)
        with open('/proc/mounts') as f:
            mounts = [line.split() for line in f]
        found = [(point + mine[''], 'cpu.stat') for _, point, kind, *_ in mounts
                 if kind == 'cgroup2' and '' in mine]
        found += [(point + path, 'cpuacct.usage') for _, point, kind, options, *_ in mounts
                  for names, path in mine.items() if kind == 'cgroup'
                  and 'cpuacct' in names.split(',') and 'cpuacct' in options.split(',')]
        if not found:
            raise RuntimeError('no cgroup v2 or cpuacct hierarchy in /proc/mounts')
        self.parent, self.usage = found[0]
        self.path = os.path.join(self.parent, 'fibosms-bench-%s-%d' % (name, os.getpid()))
        os.mkdir(self.path)

    def __enter__(self):
        self.move(self.path)

    def __exit__(self, *exc):
        self.move(self.parent)

    def move(self, group):
        with open(os.path.join(group, 'cgroup.procs'), 'w') as f:
            f.write(str(os.getpid()))

    def cpu_seconds(self):
        with open(os.path.join(self.path, self.usage)) as f:
            text = f.read()
        if self.usage == 'cpu.stat':   # usage_usec N
            return int(text.split('usage_usec')[1].split()[0]) / 1e6
        return int(text) / 1e9          # nanoseconds

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:     # a process left in it: leave the empty group to the system
            pass


class Server:
    """One page on a private Apache (and, for php-fpm, a php-fpm master beside it), in a
    workspace of support.py's and a cgroup of its own."""

    def __init__(self, name, site, code):
        self.name, self.site, self.group, self.servers = name, site, None, []
        self.ws = support.Workspace('bench-' + name)
        copy_code(code, self.ws.app)

    def start(self):
        self.group = ControlGroup(self.name)
        with self.group:
            self.servers, self.url = self.site(self.ws)
        for i in range(100):     # the pushes the retry mix resends (and a check of the page)
            answer = support.get('%s?%s' % (self.url, push_query('retry-%d' % i)))
            if (answer.status, answer.body) != (200, DONE):
                raise RuntimeError('%s answered %r; see %s' % (self.name, answer, self.ws.logs))
        return self

    def wrk(self, mode, run, connections, seconds):
        before = self.group.cpu_seconds()
        out = subprocess.run(
            ['wrk', '-t%d' % min(connections, 2), '-c%d' % connections, '-d%ds' % seconds,
             '--timeout', '10s', '-s', MIX, self.url, '--', mode, run],
            stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
        cpu = self.group.cpu_seconds() - before
        result = json.loads(out.split('BENCH ', 1)[1])
        result.update(per_s=result['requests'] / (result['us'] / 1e6),
                      cpu_ms=cpu * 1e3 / max(result['requests'], 1))
        return result

    def logs(self):
        """{log file: {'lines': N, 'top': [[count, line], ...]}} of the error logs and
        receiver.log (not the access logs), each line's digits as # so that alike lines
        count together: what a server said while it was measured."""
        found = {}
        names = [n for n in sorted(os.listdir(self.ws.logs)) if 'access' not in n]
        for name in names + [os.path.join(self.ws.data, 'receiver.log')]:
            lines = [line for line in self.ws.log(name).splitlines() if line.strip()]
            if lines:
                alike = collections.Counter(
                    re.sub(r'\d+', '#', re.sub(r'^(\[[^]]*\] )+', '', line)) for line in lines)
                found[os.path.basename(name)] = {'lines': len(lines), 'top': [
                    [count, line[:300]] for line, count in alike.most_common(5)]}
        return found

    def stop(self):
        for server in reversed(self.servers):
            server.stop()
        self.ws.remove()
        if self.group:
            self.group.remove()


def bench_servers(code, rounds, seconds, levels):
    sites = {'mod_wsgi': site_mod_wsgi, 'php-fpm': site_php_fpm, 'cgi': site_cgi,
             'php-cgi': site_php_cgi}
    running, runs, logs = [], [], {}
    try:
        for name, site in sites.items():
            running.append(Server(name, site, code))
            running[-1].start()
        for server in running:
            server.wrk('unique', 'warm-' + server.name, 4, 1)
        for r in range(rounds):
            for mode in ('unique', 'retry'):
                for c in levels:
                    turn = (r + levels.index(c)) % len(running)
                    for server in running[turn:] + running[:turn]:
                        out = server.wrk(mode, 'r%d-%s-%d' % (r, mode, c), c, seconds)
                        out.update(server=server.name, mode=mode, connections=c, round=r)
                        runs.append(out)
                        say('  %-8s %-6s c=%-3d %6.0f/s p50 %6.2f ms p99 %7.2f ms CPU %5.2f ms '
                            'errors %d answered-not-2 %d' % (
                                server.name, mode, c, out['per_s'], out['p50_us'] / 1e3,
                                out['p99_us'] / 1e3, out['cpu_ms'], out['errors'],
                                out['not_done']))
    finally:
        for server in running:
            logs[server.name] = server.logs()
            server.stop()
    summary = {}
    for mode in ('unique', 'retry'):
        for c in levels:
            pick = {name: [x for x in runs if (x['server'], x['mode'], x['connections'])
                           == (name, mode, c)] for name in sites}
            row = {name: dict({key: median([x[key] for x in xs])
                               for key in ('per_s', 'p50_us', 'p99_us', 'cpu_ms')},
                              requests=sum(x['requests'] for x in xs),
                              errors=sum(x['errors'] for x in xs),
                              not_done=sum(x['not_done'] for x in xs))
                   for name, xs in pick.items()}
            for ours, peer in PAIRS:
                pairs = list(zip(pick[ours], pick[peer]))
                row[ours + '/' + peer] = {key: median([a[key] / b[key] for a, b in pairs])
                                          for key in ('per_s', 'p99_us', 'cpu_ms')}
            summary['%s c=%d' % (mode, c)] = row
    return {'rounds': rounds, 'seconds': seconds, 'levels': levels, 'summary': summary,
            'logs': logs, 'runs': runs}


# -- The table --------------------------------------------------------------------------------

def machine(work):
    import platform

    def first_line(*command):
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True).stdout.strip().splitlines()[0]

    with open('/proc/cpuinfo') as f:
        cpu = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    return {
        'cpus': os.cpu_count(), 'nproc': int(first_line('nproc')),
        'cpu': cpu[0] if cpu else None, 'kernel': platform.release(),
        'filesystem': ' on '.join(first_line('findmnt', '-no', 'FSTYPE,SOURCE', '-T', work)
                                  .split()),
        'python': first_line(PYTHON, '-c', 'import sys, sqlite3; print(sys.version.split()[0],'
                                           ' "SQLite", sqlite3.sqlite_version)'),
        'apache': first_line('apache2', '-v').split(': ')[-1],
        'php': first_line('php-cgi', '-v').split(' (built')[0],
        'mod_wsgi': first_line('dpkg-query', '-W', '-f', '${Version}',
                                'libapache2-mod-wsgi-py3'),
        'wrk': first_line('wrk', '--version').split(' [')[0],
        'hyperfine': first_line('hyperfine', '-V')}


def table(results):
    lines = ['Machine: ' + '; '.join('%s %s' % item for item in results['machine'].items())]
    cgi = results.get('cgi')
    if cgi:
        lines += ['', '1. One push as a CGI process (hyperfine, median of %d rounds of %d runs)'
                  % (cgi['rounds'], cgi['runs']),
                  '   %-24s %8s %8s %8s %8s' % ('', 'wall ms', 'x pass', 'CPU ms', 'x pass')]
        for name in ('python3 -c pass', 'python3 receiver.py', 'receiver.cgi',
                     'php-cgi receiver.php'):
            x = cgi[name]
            lines.append('   %-24s %8.2f %8.2f %8.2f %8.2f' % (
                name, x['wall_ms'], x['wall_x_pass'], x['cpu_ms'], x['cpu_x_pass']))
    inproc = results.get('inprocess')
    if inproc:
        lines += ['', '2. In-process (median of %d rounds of %d; %s): WSGI callable %.0f '
                  'pushes/s, raw sqlite3 %.0f inserts/s: %.2fx' % (
                      inproc['rounds'], inproc['batch'], inproc['python'], inproc['app_per_s'],
                      inproc['floor_per_s'], inproc['ratio']),
                  '   on tmpfs: %.1f us a push, %.1f us an insert' % (
                      1e6 / inproc['app_tmpfs_per_s'], 1e6 / inproc['floor_tmpfs_per_s']),
                  '   forwarding each push, signed, to an application on 127.0.0.1: '
                  '%.0f pushes/s' % inproc['forward_per_s']]
    srv = results.get('servers')
    if srv:
        lines += ['', '3. Apache on 127.0.0.1, wrk %d s per load, median of %d rounds; '
                  'pushes/s, p50 and p99 ms, CPU ms per push; x: receiver / PHP'
                  % (srv['seconds'], srv['rounds']),
                  '   (!N: N requests failed, for wrk; ?N: N answers were not <Status>2</Status>;'
                  ' over all rounds)']
        for ours, peer in PAIRS:
            lines.append('   %-12s %-30s %-30s %5s %5s %5s' % (
                'load', ours, peer, 'x/s', 'x p99', 'x CPU'))
            for load, row in srv['summary'].items():
                cells = ['%6.0f %6.2f %7.2f %6.2f%s%s' % (
                    row[n]['per_s'], row[n]['p50_us'] / 1e3, row[n]['p99_us'] / 1e3,
                    row[n]['cpu_ms'], ' !%d' % row[n]['errors'] if row[n]['errors'] else '',
                    ' ?%d' % row[n]['not_done'] if row[n]['not_done'] else '')
                         for n in (ours, peer)]
                x = row[ours + '/' + peer]
                lines.append('   %-12s %-30s %-30s %5.2f %5.2f %5.2f' % (
                    load, cells[0], cells[1], x['per_s'], x['p99_us'], x['cpu_ms']))
    box = results.get('inbox')
    if box:
        lines += ['', '4. The inbox on %d messages: server time of one page, median of %d runs'
                  % (box['messages'], box['runs'])]
        for name, row in box.items():
            if isinstance(row, dict):
                lines.append('   %-30s %7.1f ms (max %.1f), %d rows%s' % (
                    name, row['ms'], row['max_ms'], row['rows'],
                    ', stopped at the budget' if row['stopped'] else ''))
    return '\n'.join(lines)


def bench_inbox(work, code, count, runs):
    """Server time of the inbox's pages on a database of `count` messages (see 4. above)."""
    import io
    import re as regex
    import urllib.parse
    sys.path.insert(0, code)
    import inbox
    import storage
    data = os.path.join(work, 'inbox', 'fibosms-data')
    os.makedirs(data, 0o700)
    db = os.path.join(data, 'messages.sqlite3')
    conn = storage.connect(db)
    start = time.time() - count * 60
    conn.execute('BEGIN')
    conn.executemany(storage.INSERT_MESSAGE, (
        ('bench-%d' % n, '0%09d' % (912000000 + n % 10000), '84%09d' % (912000000 + n % 10000),
         'Tin nhan so %d' % n, 'utf-8', '', '{}', '192.0.2.1', storage.utc_iso(start + 60 * n),
         storage.utc_iso(start + 60 * n), 'failed' if n % 50 == 0 else 'processed', None,
         None, None) for n in range(count)))
    conn.execute('COMMIT')
    conn.close()
    config = os.path.join(data, 'settings.env')
    with open(os.open(config, os.O_WRONLY | os.O_CREAT, 0o600), 'w') as f:
        f.write('FIBOSMS_INBOX_PASSWORD=%s\n' % inbox.hash_password('bench password', 1000))
    app = inbox.make_inbox(config=config)

    def call(method='GET', query='', form=None, cookie=''):
        body = urllib.parse.urlencode(form or {}).encode()
        environ = {'REQUEST_METHOD': method, 'QUERY_STRING': query, 'PATH_INFO': '/',
                   'SCRIPT_NAME': '', 'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '443',
                   'HTTP_HOST': '127.0.0.1', 'HTTP_ORIGIN': 'https://127.0.0.1',
                   'HTTP_COOKIE': cookie, 'REMOTE_ADDR': '127.0.0.1', 'wsgi.url_scheme': 'https',
                   'CONTENT_LENGTH': str(len(body)), 'wsgi.input': io.BytesIO(body),
                   'wsgi.errors': sys.stderr}
        answer = {}
        began = time.perf_counter()
        text = b''.join(app(environ, lambda status, headers: answer.update(
            status=status, headers=dict(headers)))).decode('utf-8')
        return (time.perf_counter() - began) * 1e3, answer, text
    _, answer, _ = call('POST', form={'action': 'login', 'password': 'bench password'})
    cookie = answer['headers']['Set-Cookie'].split(';')[0]
    _, _, page = call(cookie=cookie)
    csrf = regex.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    middle = storage.utc_iso(start + 60 * (count // 2)) + '|%d' % (count // 2)
    days = (time.strftime('%Y-%m-%d', time.gmtime(start + 60 * count - 3 * 86400)),
            time.strftime('%Y-%m-%d', time.gmtime(start + 60 * count - 2 * 86400)))
    cases = {
        'first page': ('GET', '', None),
        'next page, from the middle': ('POST', '', {'after': middle}),
        'one phone': ('POST', '', {'phone': '0912 004 242'}),
        'two days': ('POST', '', {'from': days[0], 'to': days[1]}),
        'one phone, two days': ('POST', '', {'phone': '+84912004242', 'from': days[0],
                                             'to': days[1]}),
        'failed': ('POST', '', {'state': 'failed'}),
        'text search, nothing found': ('POST', '', {'words': 'nowhere'})}
    result = {'messages': count, 'runs': runs, 'budget_s': inbox.SEARCH_BUDGET}
    for name, (method, query, form) in cases.items():
        form = dict(form, action='search', csrf=csrf) if form is not None else None
        times, shown = [], None
        for _ in range(runs):
            ms, answer, text = call(method, query, form, cookie)
            if not answer['status'].startswith('200'):
                raise RuntimeError('inbox %s answered %s' % (name, answer['status']))
            times.append(ms)
            shown = text.count('<tr class=')
        result[name] = {'ms': median(times), 'max_ms': max(times), 'rows': shown,
                        'stopped': 'search stopped' in text}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer rounds, shorter runs')
    parser.add_argument('--parts', default='cgi,inprocess,servers,inbox', help='(%(default)s)')
    parser.add_argument('--levels', default='1,4,16', help='wrk connections (%(default)s)')
    parser.add_argument('--code', default=ROOT,
                        help="the folder the receiver's .py files come from (%(default)s)")
    args = parser.parse_args(argv)
    source, quick, parts = os.path.abspath(args.code), args.quick, args.parts.split(',')
    work = tempfile.mkdtemp(prefix='fibosms-bench-')
    started = time.time()
    # Every part measures the code as it was at the start, even if it is edited meanwhile.
    code = os.path.join(work, 'code')
    os.mkdir(code)
    copy_code(source, code)
    names = sorted(os.listdir(code))
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(code, name), 'rb') as f:
            digest.update(name.encode() + b'\0' + f.read())

    def git(*command):
        return subprocess.run(['git', '-C', source] + list(command), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, universal_newlines=True).stdout
    results = {'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started)),
               'command': ' '.join(['python3', 'bench/run.py'] + sys.argv[1:]),
               'python': sys.executable,
               'commit': git('describe', '--always', '--dirty').strip(),
               'code': {'from': source, 'files': names, 'sha256': digest.hexdigest(),
                        'uncommitted': [line[3:] for line in git(
                            'status', '--porcelain', '--', *names).splitlines()]},
               'machine': machine(work)}
    try:
        if 'cgi' in parts:
            say('1. CGI processes ...')
            results['cgi'] = bench_cgi(code, 3 if quick else 10, 10 if quick else 30)
        if 'inprocess' in parts:
            say('2. In-process ...')
            results['inprocess'] = bench_inprocess(work, code, 3 if quick else 15,
                                                   200 if quick else 500)
        if 'inbox' in parts:
            say('4. The inbox on a big database ...')
            results['inbox'] = bench_inbox(work, code, 100000 if quick else 1000000,
                                           5 if quick else 20)
        if 'servers' in parts:
            say('3. Servers ...')
            results['servers'] = bench_servers(code, 1 if quick else 3, 2 if quick else 4,
                                               [int(c) for c in args.levels.split(',')])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results['seconds'] = round(time.time() - started)
    results['table'] = table(results)
    print(results['table'])
    os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
    for name in ('latest.json', 'run-%s.json' % results['started'].replace(':', '')):
        with open(os.path.join(HERE, 'results', name), 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
