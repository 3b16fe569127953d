#!/usr/bin/env python3
"""What one FiboSMS push costs: receiver.py against its floor and against a Flask receiver.

    python3 bench/run.py [--quick] [--parts cgi,inprocess,apache] [--python /usr/bin/python3]

Standard library only, plus Debian tools it finds: wrk (the load generator), apache2 with
libapache2-mod-wsgi-py3 (for part 3), GNU time (for the peak RSS of a CGI process). Flask for
the peer receiver is installed into bench/.venv on first run (pip, PyPI) and nowhere else.
Takes a few minutes on a 2-core machine; prints one table and writes it, with every sample,
as JSON to bench/results/ (latest.json and a dated copy).

The machine is assumed noisy (other work runs on it): every comparison is a ratio of two
things measured in the same run, interleaved round by round, and what is reported is the
median over rounds (of each figure, and of the per-round ratio).

1. CGI cold start: one push as a CGI process, ``python3 receiver.py`` with the environment a
   web server gives a CGI script (durable insert included), against ``python3 -c pass`` with
   the same environment; also the shipped shim deploy/cgi/receiver.cgi. Wall and CPU time
   (user + system, from wait4). Import cost from ``-X importtime``. Target: at most 1.9x.
2. In-process: pushes per second through the WSGI callable (unique guids, token checked,
   durable), against the floor: raw sqlite3 inserts of the same row into the same schema,
   synchronous=FULL, WAL, BEGIN IMMEDIATE ... COMMIT each, one connection kept open, in the
   same directory. Target: at least 0.8x.
3. Apache mod_wsgi daemon mode on 127.0.0.1: two private Apache instances built from
   deploy/apache-mod_wsgi.conf (TLS lines dropped, paths and port filled in), identical but
   for the script: receiver.py, or bench/peers/flask_receiver.py. wrk at a few concurrency
   levels, unique guids and a duplicate-heavy mix (90% retries of 100 known guids):
   pushes per second, p50 and p99 latency. Target: at least 1.5x Flask's throughput, lower p99.
4. Memory: peak RSS of one CGI push (and of ``python3 -c pass``), and of the mod_wsgi daemon
   processes before and after 10,000 further pushes each (growth should be ~0).

The python used is /usr/bin/python3 when it exists (what Debian's mod_wsgi and a shared
host's CGI run), else this interpreter; --python picks another. To measure a change before it
is applied: --code DIR takes receiver.py and storage.py from DIR; --wsgi-daemon 'processes=1
threads=5' replaces the snippet's process and thread counts.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CODE = ROOT       # where receiver.py and storage.py are taken from (--code)
RESULTS = os.path.join(HERE, 'results')
VENV = os.path.join(HERE, '.venv')
PEER = os.path.join(HERE, 'peers', 'flask_receiver.py')
APACHE_CONF = os.path.join(ROOT, 'deploy', 'apache-mod_wsgi.conf')
CGI_SHIM = os.path.join(ROOT, 'deploy', 'cgi', 'receiver.cgi')
APACHE_MODULES = '/usr/lib/apache2/modules'

TOKEN = 'bench-secret-0123456789abcdef'
DONE = b'<Status>2</Status>'
TARGETS = {'cgi_ratio_max': 1.9, 'inprocess_ratio_min': 0.8, 'apache_rps_ratio_min': 1.5}

# -- Small helpers ----------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def say(text):
    print(text, file=sys.stderr, flush=True)


def default_python():
    return '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def query(guid, n=0):
    return 'guid=%s&phone=84912345678&message=Xin+chao+%d' % (guid, n)


# -- The machine ------------------------------------------------------------------------------

def machine(python, workdir):
    """What the figures were measured on."""
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name')), '')
    except OSError:
        pass
    sys.path.insert(0, ROOT)
    import storage
    fs_type, device = storage.filesystem_type(workdir), ''
    try:
        with open('/proc/mounts') as f:
            best = ''
            for fields in (line.split() for line in f):
                point = fields[1]
                if os.path.realpath(workdir).startswith(point.rstrip('/') + '/') \
                        and len(point) >= len(best):
                    best, device = point, fields[0]
    except OSError:
        pass
    versions = subprocess.run(
        [python, '-c', 'import sys, sqlite3; print(sys.version.split()[0], '
                       'sqlite3.sqlite_version)'],
        capture_output=True, text=True).stdout.split()
    info = {'nproc': os.cpu_count(), 'cpu': cpu, 'kernel': platform.release(),
            'filesystem': '%s on %s' % (fs_type, device), 'python': python,
            'python_version': versions[0] if versions else None,
            'sqlite_version': versions[1] if len(versions) > 1 else None}
    for name, cmd in (('apache', ['apache2', '-v']), ('wrk', ['wrk', '--version']),
                      ('mod_wsgi', ['dpkg-query', '-W', '-f', '${Version}',
                                    'libapache2-mod-wsgi-py3']),
                      ('flask', [os.path.join(VENV, 'bin', 'python'), '-c',
                                 'import importlib.metadata as m; print(m.version("flask"))'])):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
            info[name] = out.splitlines()[0].strip() if out else None
        except OSError:
            info[name] = None
    return info


# -- 1. CGI cold start ------------------------------------------------------------------------

def cgi_environ(db, guid, path_info):
    """The environment a web server hands a CGI script (RFC 3875), and nothing else."""
    return {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
            'QUERY_STRING': query(guid), 'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '80',
            'SERVER_PROTOCOL': 'HTTP/1.1', 'SERVER_SOFTWARE': 'Apache', 'REMOTE_ADDR': '127.0.0.1',
            'SCRIPT_NAME': '/fibosms', 'PATH_INFO': path_info,
            'FIBOSMS_DB': db, 'FIBOSMS_TOKEN': TOKEN}


def spawn_timed(cmd, env):
    """Run `cmd`; return (wall s, CPU s of the child alone, stdout, stderr, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()   # a CGI answer fits in the pipe
    proc.stdout.close()
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, out, err, proc.returncode


def make_cgi_shim(appdir, db):
    """deploy/cgi/receiver.cgi with its CHANGE lines filled in, or None if it is not there."""
    if not os.path.exists(CGI_SHIM):
        return None
    with open(CGI_SHIM) as f:
        text = f.read()
    for name, value in (('CODE_DIR', appdir), ('DB', db), ('TOKEN', TOKEN)):
        text, n = re.subn(r'^%s = .*$' % name, '%s = %r' % (name, value), text, flags=re.M)
        if n != 1:
            return None
    path = os.path.join(appdir, 'receiver.cgi')
    with open(path, 'w') as f:
        f.write(text)
    return path


def bench_cgi(python, workdir, rounds):
    """Part 1 (and the CGI half of part 4)."""
    appdir = os.path.join(workdir, 'cgi-app')
    os.makedirs(appdir)
    for name in ('receiver.py', 'storage.py'):
        shutil.copy(os.path.join(CODE, name), appdir)
    db = os.path.join(workdir, 'cgi-data', 'messages.sqlite3')
    shim = make_cgi_shim(appdir, db)
    cases = [('pass', [python, '-c', 'pass']),
             ('receiver.py', [python, os.path.join(appdir, 'receiver.py')])]
    if shim:
        cases.append(('receiver.cgi', [python, shim]))
    counter = [0]

    def one(name, cmd, extra=()):
        counter[0] += 1
        env = cgi_environ(db, 'cgi-%d' % counter[0], '/' + TOKEN)
        wall, cpu, out, err, code = spawn_timed(cmd[:1] + list(extra) + cmd[1:], env)
        if name != 'pass' and (code != 0 or not out.endswith(DONE) or b'200 OK' not in out):
            raise RuntimeError('CGI push failed (%s): %r %r' % (name, out[-200:], err[-500:]))
        return wall, cpu, err

    for name, cmd in cases:     # the first push creates the database; bytecode gets cached
        one(name, cmd)
        one(name, cmd)
    samples = {name: {'wall': [], 'cpu': []} for name, _ in cases}
    for i in range(rounds):
        order = cases[i % len(cases):] + cases[:i % len(cases)]
        for name, cmd in order:
            wall, cpu, _ = one(name, cmd)
            samples[name]['wall'].append(wall)
            samples[name]['cpu'].append(cpu)
    result = {'rounds': rounds, 'samples': samples}
    for name, _ in cases:
        for kind in ('wall', 'cpu'):
            result['%s_%s_ms' % (name, kind)] = median(samples[name][kind]) * 1e3
            if name != 'pass':
                result['%s_%s_ratio' % (name, kind)] = median(
                    [a / b for a, b in zip(samples[name][kind], samples['pass'][kind])])

    # Import cost: modules that receiver.py imports beyond the bare interpreter's own.
    runs = {'pass': [], 'receiver.py': []}
    for i in range(7):
        for name, cmd in cases[:2]:
            runs[name].append(parse_importtime(one(name, cmd, ['-X', 'importtime'])[2]))
    bare = set().union(*(set(r) for r in runs['pass']))
    extra = {}
    for run in runs['receiver.py']:
        for module, (self_us, cumulative_us, depth) in run.items():
            if module not in bare:
                extra.setdefault(module, []).append((self_us, cumulative_us, depth))
    modules = {m: {'self_us': median([s for s, _, _ in v]),
                   'cumulative_us': median([c for _, c, _ in v]),
                   'top_level': v[0][2] == 0} for m, v in extra.items()}
    result['imports_total_us'] = sum(m['self_us'] for m in modules.values())
    result['imports_top_level'] = sorted(
        ((m, v['cumulative_us']) for m, v in modules.items() if v['top_level']),
        key=lambda item: -item[1])
    result['imports_modules'] = modules

    # Python caches bytecode only for imported modules: a script started by its path, as
    # receiver.py is here, is compiled at every start.
    code = ('import sys, time; source = open(sys.argv[1]).read(); start = time.perf_counter(); '
            'compile(source, sys.argv[1], "exec"); print(time.perf_counter() - start)')
    result['receiver.py_compile_ms'] = median([float(subprocess.run(
        [python, '-c', code, cases[1][1][1]], capture_output=True, text=True, check=True).stdout)
        for i in range(7)]) * 1e3

    # Peak RSS of one process: GNU time forks from a small process, so its child's maxrss is
    # the child's own (a child forked from this big Python would inherit its high-water mark).
    gnu_time = shutil.which('time')     # Debian package "time"; the shell's keyword won't do
    if gnu_time:
        rss = {'pass': [], 'receiver.py': []}
        for i in range(5):
            for name, cmd in cases[:2]:
                counter[0] += 1
                env = cgi_environ(db, 'cgi-rss-%d' % counter[0], '/' + TOKEN)
                proc = subprocess.run([gnu_time, '-f', 'MAXRSS %M'] + cmd, env=env,
                                      capture_output=True)
                found = re.search(rb'MAXRSS (\d+)', proc.stderr)
                rss[name].append(int(found.group(1)) if found else None)
        result['pass_peak_rss_kib'] = median(rss['pass'])
        result['receiver.py_peak_rss_kib'] = median(rss['receiver.py'])
    return result


def parse_importtime(stderr):
    """-X importtime lines -> {module: (self us, cumulative us, depth)}."""
    modules = {}
    for line in stderr.decode('utf-8', 'replace').splitlines():
        found = re.match(r'import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)', line)
        if found:
            modules[found.group(4)] = (int(found.group(1)), int(found.group(2)),
                                       (len(found.group(3)) - 1) // 2)
    return modules


# -- 2. In-process ----------------------------------------------------------------------------

def bench_inprocess(python, workdir, rounds, batch):
    """Part 2, run in a child process of `python` (see inprocess_worker)."""
    args = json.dumps({'workdir': workdir, 'rounds': rounds, 'batch': batch})
    proc = subprocess.run([python, os.path.abspath(__file__), '--code', CODE,
                           '--worker-inprocess', args], capture_output=True, text=True, cwd=CODE)
    if proc.returncode != 0:
        raise RuntimeError('in-process worker failed:\n' + proc.stderr[-3000:])
    return json.loads(proc.stdout)


def inprocess_worker(args):
    import io
    import sqlite3
    sys.path.insert(0, CODE)
    import receiver
    import storage

    directory = os.path.join(args['workdir'], 'inprocess')
    os.makedirs(directory)
    app_db, floor_db = (os.path.join(directory, name) for name in ('app.sqlite3', 'floor.sqlite3'))
    app = receiver.make_app(db=app_db, token=TOKEN)
    base = {'REQUEST_METHOD': 'GET', 'SCRIPT_NAME': '/fibosms', 'PATH_INFO': '/' + TOKEN,
            'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '80', 'SERVER_PROTOCOL': 'HTTP/1.1',
            'REMOTE_ADDR': '127.0.0.1', 'wsgi.version': (1, 0), 'wsgi.url_scheme': 'http',
            'wsgi.input': io.BytesIO(b''), 'wsgi.errors': sys.stderr, 'wsgi.multithread': True,
            'wsgi.multiprocess': True, 'wsgi.run_once': False}
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def push(guid):
        environ = dict(base, QUERY_STRING=query(guid))
        body = b''.join(app(environ, start_response))
        if body != DONE or not statuses.pop().startswith('200'):
            raise RuntimeError('push %s answered %r' % (guid, body))

    floor = sqlite3.connect(floor_db, isolation_level=None)
    floor.execute('PRAGMA synchronous = FULL')
    assert floor.execute('PRAGMA synchronous').fetchone()[0] == 2
    assert floor.execute('PRAGMA journal_mode = WAL').fetchone()[0] == 'wal'
    for statement in storage.MIGRATIONS[0]:
        floor.execute(statement)

    def insert(guid):
        stamp = storage.utc_iso()
        floor.execute('BEGIN IMMEDIATE')
        floor.execute(storage.INSERT_MESSAGE, (guid, '84912345678', '84912345678', 'Xin chao 0',
                                               'utf-8', query(guid), '{}', '127.0.0.1', stamp,
                                               stamp, 'processed', None, stamp))
        floor.execute('COMMIT')

    def timed(fn, prefix):
        start = time.perf_counter()
        for i in range(args['batch']):
            fn('%s-%d' % (prefix, i))
        return args['batch'] / (time.perf_counter() - start)

    timed(push, 'warm-app')
    timed(insert, 'warm-floor')
    app_rates, floor_rates = [], []
    for r in range(args['rounds']):
        pair = [(app_rates, push, 'app-%d' % r), (floor_rates, insert, 'floor-%d' % r)]
        for rates, fn, prefix in (pair if r % 2 else pair[::-1]):
            rates.append(timed(fn, prefix))
    floor.close()

    # The storage work of a CGI push: open, insert, close. Closing the last connection to a
    # WAL database also checkpoints it and deletes the -wal file.
    cgi_db, cgi_times = os.path.join(directory, 'cgi.sqlite3'), []
    for i in range(60):
        start = time.perf_counter()
        conn = storage.connect(cgi_db)
        storage.deliver(conn, {'guid': 'cgi-%d' % i, 'phone': '84912345678',
                               'message': 'Xin chao 0', 'charset': 'utf-8',
                               'raw_query': query('cgi-%d' % i)})
        conn.close()
        cgi_times.append(time.perf_counter() - start)
    print(json.dumps({
        'batch': args['batch'], 'rounds': args['rounds'],
        'app_per_s': median(app_rates), 'floor_per_s': median(floor_rates),
        'ratio': median([a / f for a, f in zip(app_rates, floor_rates)]),
        'cgi_storage_ms': median(cgi_times[10:]) * 1e3,
        'samples': {'app': app_rates, 'floor': floor_rates}}))
    return 0


# -- 3. Apache mod_wsgi -----------------------------------------------------------------------

WRK_SCRIPT = r'''
-- Unique guids (MODE "unique") or a duplicate-heavy mix (MODE "dup": DUP_SHARE of the
-- requests retry one of DUP_POOL guids stored beforehand).
local counter = 0
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end
function init(args)
  math.randomseed(tid * 7919 + os.time())
end
function request()
  counter = counter + 1
  local guid
  if MODE == "dup" and math.random() < DUP_SHARE then
    guid = "dup-" .. math.random(0, DUP_POOL - 1)
  else
    guid = RUN .. "-" .. tid .. "-" .. counter
  end
  return wrk.format("GET", URL_PATH .. "?guid=" .. guid ..
                    "&phone=84912345678&message=Xin+chao+" .. counter)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %d, "duration_us": %d, "errors_connect": %d, ' ..
    '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(99), latency.mean))
end
'''


class Apache:
    """A private Apache on 127.0.0.1 running one WSGI script under the shipped config."""

    def __init__(self, workdir, name, script, python_home, daemon_options=None):
        self.name, self.script, self.daemon_options = name, script, daemon_options
        self.root = os.path.join(workdir, 'apache-' + name)
        self.port = free_port()
        self.user = 'www-data' if os.geteuid() == 0 else None
        self.data = os.path.join(self.root, 'data')
        self.db = os.path.join(self.data, 'messages.sqlite3')
        for sub in ('logs', 'run', 'htdocs', 'data'):
            os.makedirs(os.path.join(self.root, sub))
        if self.user:
            shutil.chown(self.data, self.user, self.user)
        os.chmod(self.data, 0o700)
        self.conf = os.path.join(self.root, 'httpd.conf')
        with open(self.conf, 'w') as f:
            f.write(self.config(python_home))
        self.proc = None

    def config(self, python_home):
        with open(APACHE_CONF) as f:
            shipped = f.read()
        appdir, script = os.path.split(self.script)
        daemon_user = 'user=%s group=%s' % (self.user, self.user) if self.user else ''
        lines = []
        for line in re.sub(r'\\\n\s*', ' ', shipped).splitlines():   # join continued lines
            if re.match(r'\s*SSL', line):
                continue        # loopback HTTP: TLS would cost both receivers the same
            line = re.sub(r'<VirtualHost [^>]*>', '<VirtualHost *:%d>' % self.port, line)
            line = re.sub(r'^(\s*)ServerName \S+', r'\1ServerName 127.0.0.1', line)
            line = re.sub(r'^(\s*)DocumentRoot \S+',
                          r'\1DocumentRoot ' + os.path.join(self.root, 'htdocs'), line)
            line = line.replace('/srv/fibosms/app/receiver.py', self.script)
            line = line.replace('<Files receiver.py>', '<Files %s>' % script)
            line = line.replace('/srv/fibosms/app', appdir)
            line = line.replace('/srv/fibosms/data', self.data)
            line = line.replace('${APACHE_LOG_DIR}', os.path.join(self.root, 'logs'))
            line = re.sub(r'SetEnv FIBOSMS_TOKEN \S+', 'SetEnv FIBOSMS_TOKEN ' + TOKEN, line)
            if line.lstrip().startswith('WSGIDaemonProcess'):
                line = re.sub(r'user=\S+ group=\S+', daemon_user, line)
                if self.daemon_options:     # --wsgi-daemon: try other process/thread counts
                    line = re.sub(r'processes=\d+ threads=\d+', self.daemon_options, line)
                line += ' python-home=' + python_home
            lines.append(line)
        head = [
            'ServerRoot %s' % self.root,
            'DefaultRuntimeDir %s' % os.path.join(self.root, 'run'),
            'PidFile %s' % os.path.join(self.root, 'run', 'httpd.pid'),
            'Listen 127.0.0.1:%d' % self.port,
            'ServerName 127.0.0.1',
            'ErrorLog %s' % os.path.join(self.root, 'logs', 'error.log'),
            'LogLevel warn',
            'WSGISocketPrefix %s' % os.path.join(self.root, 'run', 'wsgi'),
        ]
        for module in ('mpm_event', 'authz_core', 'env', 'setenvif', 'wsgi'):
            head.append('LoadModule %s_module %s/mod_%s.so' % (module, APACHE_MODULES, module))
        if os.path.exists('/etc/apache2/mods-available/mpm_event.conf'):
            head.append('Include /etc/apache2/mods-available/mpm_event.conf')  # Debian's stock
        if self.user:
            head += ['User %s' % self.user, 'Group %s' % self.user]
        return '\n'.join(head + [''] + lines) + '\n'

    @property
    def url_path(self):
        return '/fibosms/' + TOKEN

    def start(self):
        check = subprocess.run(['apache2', '-t', '-f', self.conf], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError('apache config for %s: %s' % (self.name, check.stderr))
        self.proc = subprocess.Popen(['apache2', '-f', self.conf, '-DFOREGROUND'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                if self.get('warm-0') == (200, DONE):
                    return
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError('apache for %s did not answer; see %s'
                                   % (self.name, os.path.join(self.root, 'logs')))
            time.sleep(0.2)

    def get(self, guid):
        url = 'http://127.0.0.1:%d%s?%s' % (self.port, self.url_path, query(guid))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def daemon_pids(self):
        """The mod_wsgi daemon processes: children of this Apache named (wsgi:...)."""
        pids = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % entry) as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
                with open('/proc/%s/cmdline' % entry, 'rb') as f:
                    cmdline = f.read()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and cmdline.startswith(b'(wsgi:'):
                pids.append(int(entry))
        return sorted(pids)

    def memory(self):
        """{pid: (VmRSS KiB, VmHWM KiB)} of the daemon processes."""
        out = {}
        for pid in self.daemon_pids():
            with open('/proc/%d/status' % pid) as f:
                fields = dict(line.split(':', 1) for line in f if ':' in line)
            out[pid] = tuple(int(fields[k].split()[0]) for k in ('VmRSS', 'VmHWM'))
        return out

    def count_rows(self, python):
        """Messages stored, read as the daemon's user (a root-owned -shm would lock it out)."""
        code = ('import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); '
                'print(*c.execute("SELECT count(*), coalesce(sum(deliveries), 0) FROM messages")'
                '.fetchone())')
        kwargs = {'user': self.user, 'group': self.user} if self.user else {}
        out = subprocess.run([python, '-c', code, self.db], capture_output=True, text=True,
                             check=True, **kwargs).stdout.split()
        return int(out[0]), int(out[1])

    def error_lines(self):
        lines = []
        for name in os.listdir(os.path.join(self.root, 'logs')):
            if name.endswith('error.log'):
                with open(os.path.join(self.root, 'logs', name), errors='replace') as f:
                    lines += [line.rstrip() for line in f
                              if 'Traceback' in line or ' 503 ' in line or 'Error' in line]
        return lines


def run_wrk(server, lua, mode, run, connections, seconds):
    threads = min(connections, 2)
    settings = ('MODE = "%s"\nRUN = "%s"\nURL_PATH = "%s"\nDUP_SHARE = 0.9\nDUP_POOL = 100\n'
                % (mode, run, server.url_path))
    script = lua + '.%s.lua' % run
    with open(script, 'w') as f:
        f.write(settings + WRK_SCRIPT)
    cmd = ['wrk', '-t%d' % threads, '-c%d' % connections, '-d%ds' % seconds, '--timeout', '10s',
           '--latency', '-s', script, 'http://127.0.0.1:%d/' % server.port]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    found = re.search(r'^BENCH (\{.*\})$', proc.stdout, re.M)
    if not found:
        raise RuntimeError('wrk gave no result: %s %s' % (proc.stdout, proc.stderr))
    result = json.loads(found.group(1))
    result['per_s'] = result['requests'] / (result['duration_us'] / 1e6)
    result['errors'] = sum(v for k, v in result.items() if k.startswith('errors_'))
    return result


def bench_apache(python, workdir, rounds, seconds, levels, memory_pushes, daemon_options=None):
    """Parts 3 and 4 (the daemon half)."""
    for tool in ('apache2', 'wrk'):
        if not shutil.which(tool):
            return {'skipped': '%s not found (apt-get install apache2 '
                               'libapache2-mod-wsgi-py3 wrk)' % tool}
    if not os.path.exists(os.path.join(APACHE_MODULES, 'mod_wsgi.so')):
        return {'skipped': 'mod_wsgi not found (apt-get install libapache2-mod-wsgi-py3)'}
    if not os.path.exists(APACHE_CONF):
        return {'skipped': '%s not found' % APACHE_CONF}
    ensure_venv()
    appdir = os.path.join(workdir, 'wsgi-app')     # like /srv/fibosms/app: root's, mode 644
    os.makedirs(appdir)
    for path in (os.path.join(CODE, 'receiver.py'), os.path.join(CODE, 'storage.py'), PEER):
        shutil.copy(path, appdir)
    servers = [Apache(workdir, 'receiver', os.path.join(appdir, 'receiver.py'), VENV,
                      daemon_options),
               Apache(workdir, 'flask', os.path.join(appdir, 'flask_receiver.py'), VENV,
                      daemon_options)]
    lua = os.path.join(workdir, 'wrk')
    with open(servers[0].conf) as f:
        daemon = re.search(r'WSGIDaemonProcess .*', f.read()).group(0)
    result = {'levels': levels, 'seconds': seconds, 'rounds': rounds, 'daemon': daemon,
              'runs': []}
    try:
        for server in servers:
            server.start()
        for server in servers:      # the 100 guids the duplicate mix retries, then warm up
            for i in range(100):
                if server.get('dup-%d' % i) != (200, DONE):
                    raise RuntimeError('%s did not store dup-%d' % (server.name, i))
            run_wrk(server, lua, 'unique', 'warm-%s' % server.name, 8, 2)
        for r in range(rounds):
            for mode in ('unique', 'dup'):
                for c in levels:
                    order = servers if (r + levels.index(c)) % 2 == 0 else servers[::-1]
                    for server in order:
                        run = 'r%d-%s-c%d-%s' % (r, mode, c, server.name)
                        out = run_wrk(server, lua, mode, run, c, seconds)
                        out.update(server=server.name, mode=mode, connections=c, round=r)
                        result['runs'].append(out)
                        say('  %-8s %-6s c=%-3d %7.0f/s p50 %6.2f ms p99 %6.2f ms errors %d'
                            % (server.name, mode, c, out['per_s'], out['p50_us'] / 1e3,
                               out['p99_us'] / 1e3, out['errors']))
        result['summary'] = summarise_apache(result['runs'], levels)
        # Memory: RSS of each daemon process now (warm), then after `memory_pushes` more
        # unique pushes per process (counted in the database), in runs of 5 s.
        result['memory'] = {}
        for server in servers:
            before = server.memory()
            processes = max(len(before), 1)
            start_rows, deadline = server.count_rows(python)[0], time.time() + 300
            n = 0
            while server.count_rows(python)[0] - start_rows < memory_pushes * processes \
                    and time.time() < deadline:
                n += 1
                run_wrk(server, lua, 'unique', 'mem-%s-%d' % (server.name, n), 8, 5)
            pushes = (server.count_rows(python)[0] - start_rows) // processes
            after = server.memory()
            result['memory'][server.name] = {
                'pushes_per_process': pushes, 'processes': processes,
                'rss_before_kib': max(v[0] for v in before.values()),
                'rss_after_kib': max(v[0] for v in after.values()),
                'peak_rss_kib': max(v[1] for v in after.values()),
                'growth_kib': max(after[p][0] - before[p][0] for p in after if p in before),
                'per_process': {str(p): {'before': before.get(p), 'after': after[p]}
                                for p in after}}
        for server in servers:
            result.setdefault('rows', {})[server.name] = server.count_rows(python)
            result.setdefault('error_log', {})[server.name] = server.error_lines()[-20:]
    finally:
        for server in servers:
            server.stop()
    return result


def summarise_apache(runs, levels):
    summary = {}
    for mode in ('unique', 'dup'):
        for c in levels:
            pick = {name: [x for x in runs if x['server'] == name and x['mode'] == mode
                           and x['connections'] == c] for name in ('receiver', 'flask')}
            row = {}
            for name, xs in pick.items():
                row[name] = {'per_s': median([x['per_s'] for x in xs]),
                             'p50_ms': median([x['p50_us'] for x in xs]) / 1e3,
                             'p99_ms': median([x['p99_us'] for x in xs]) / 1e3,
                             'errors': sum(x['errors'] for x in xs)}
            pairs = list(zip(pick['receiver'], pick['flask']))
            row['rps_ratio'] = median([a['per_s'] / b['per_s'] for a, b in pairs])
            row['p99_ratio'] = median([a['p99_us'] / b['p99_us'] for a, b in pairs])
            summary['%s c=%d' % (mode, c)] = row
    return summary


def ensure_venv():
    """bench/.venv: /usr/bin/python3's venv with Flask, for the peer under mod_wsgi."""
    python = os.path.join(VENV, 'bin', 'python')
    if os.path.exists(python) and subprocess.run([python, '-c', 'import flask'],
                                                 capture_output=True).returncode == 0:
        return
    say('creating %s with Flask (pip install flask) ...' % VENV)
    subprocess.run(['/usr/bin/python3', '-m', 'venv', VENV], check=True)
    subprocess.run([python, '-m', 'pip', 'install', '--quiet', 'flask'], check=True)


# -- The table --------------------------------------------------------------------------------

def fmt(value, spec='%.2f'):
    return '-' if value is None else spec % value


def verdict(ok):
    return 'met' if ok else 'MISSED'


def table(results):
    m, lines = results['machine'], []
    lines.append('Machine: %s CPU(s), %s; %s; Python %s, SQLite %s; %s'
                 % (m['nproc'], m['cpu'], m['filesystem'], m['python_version'],
                    m['sqlite_version'], m.get('apache') or 'no Apache'))
    cgi = results.get('cgi')
    if cgi:
        ratio = cgi['receiver.py_wall_ratio']
        lines += ['', '1. CGI cold start (median of %d interleaved rounds)' % cgi['rounds'],
                  '   %-34s %9s %9s %8s' % ('', 'wall ms', 'CPU ms', 'x pass'),
                  '   %-34s %9s %9s %8s' % ('python3 -c pass', fmt(cgi['pass_wall_ms']),
                                            fmt(cgi['pass_cpu_ms']), '1.00')]
        for name in ('receiver.py', 'receiver.cgi'):
            if name + '_wall_ms' in cgi:
                lines.append('   %-34s %9s %9s %8s' % (
                    'push via python3 ' + name, fmt(cgi[name + '_wall_ms']),
                    fmt(cgi[name + '_cpu_ms']), fmt(cgi[name + '_wall_ratio'])))
        lines.append('   target <= %.1fx (receiver.py, wall): %s'
                     % (TARGETS['cgi_ratio_max'], verdict(ratio <= TARGETS['cgi_ratio_max'])))
        lines.append('   compiling receiver.py (a script is compiled at every start): %.1f ms'
                     % cgi['receiver.py_compile_ms'])
        lines.append('   imports beyond the bare interpreter: %.1f ms (-X importtime, inflated)'
                     % (cgi['imports_total_us'] / 1e3) + '; top: ' + ', '.join(
                         '%s %.1f' % (name, us / 1e3) for name, us in cgi['imports_top_level'][:4]))
    inproc = results.get('inprocess')
    if inproc:
        lines += ['', '2. In-process, unique guids, durable (median of %d interleaved rounds of %d)'
                  % (inproc['rounds'], inproc['batch']),
                  '   WSGI callable %s pushes/s; raw sqlite3 floor %s inserts/s; ratio %s; '
                  'target >= %.1fx: %s' % (
                      fmt(inproc['app_per_s'], '%.0f'), fmt(inproc['floor_per_s'], '%.0f'),
                      fmt(inproc['ratio']), TARGETS['inprocess_ratio_min'],
                      verdict(inproc['ratio'] >= TARGETS['inprocess_ratio_min'])),
                  '   per push: %.0f us, the floor %.0f us; a CGI push\'s storage work (open, insert,'
                  ' close): %.2f ms' % (1e6 / inproc['app_per_s'], 1e6 / inproc['floor_per_s'],
                                        inproc['cgi_storage_ms'])]
    apache = results.get('apache')
    if apache and 'summary' in apache:
        found = re.search(r'processes=(\d+) threads=(\d+)', apache['daemon'])
        lines += ['', '3. Apache mod_wsgi daemon mode (%s processes x %s threads), wrk on '
                  '127.0.0.1,'
                  ' %ds runs, median of %d rounds' % ((found.groups() if found else ('?', '?'))
                                                       + (apache['seconds'], apache['rounds'])),
                  '   %-11s %21s %21s %21s %7s %7s' % (
                      'load', 'receiver /s p50 p99', 'flask /s p50 p99', '', 'x rps', 'x p99')]
        ok = True
        for key, row in apache['summary'].items():
            cells = ['%7.0f %6.2f %6.2f' % (row[n]['per_s'], row[n]['p50_ms'], row[n]['p99_ms'])
                     for n in ('receiver', 'flask')]
            lines.append('   %-11s %s %s %s %7.2f %7.2f%s' % (
                key, cells[0], cells[1], ' ' * 21, row['rps_ratio'], row['p99_ratio'],
                '' if not (row['receiver']['errors'] or row['flask']['errors'])
                else '  errors %d/%d' % (row['receiver']['errors'], row['flask']['errors'])))
            ok = ok and row['rps_ratio'] >= TARGETS['apache_rps_ratio_min'] and row['p99_ratio'] < 1
        lines.append('   (latency in ms; x = receiver / flask) target >= %.1fx throughput and a '
                     'lower p99 at every level: %s'
                     % (TARGETS['apache_rps_ratio_min'], verdict(ok)))
    elif apache:
        lines += ['', '3. Apache mod_wsgi: skipped: %s' % apache.get('skipped')]
    lines += ['', '4. Memory']
    if cgi and cgi.get('receiver.py_peak_rss_kib'):
        lines.append('   one CGI push: peak RSS %.1f MiB (python3 -c pass: %.1f MiB)'
                     % (cgi['receiver.py_peak_rss_kib'] / 1024, cgi['pass_peak_rss_kib'] / 1024))
    if apache and 'memory' in apache:
        for name, mem in apache['memory'].items():
            lines.append('   %-8s daemon process: RSS %.1f MiB warm, %.1f MiB after %d more pushes'
                         ' each (growth %+d KiB), peak %.1f MiB'
                         % (name, mem['rss_before_kib'] / 1024, mem['rss_after_kib'] / 1024,
                            mem['pushes_per_process'], mem['growth_kib'],
                            mem['peak_rss_kib'] / 1024))
    return '\n'.join(lines)


# -- Main -------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--python', default=default_python(),
                        help='the interpreter measured (default: %(default)s)')
    parser.add_argument('--quick', action='store_true', help='fewer rounds, shorter runs')
    parser.add_argument('--parts', default='cgi,inprocess,apache',
                        help='which parts to run, comma-separated (%(default)s)')
    parser.add_argument('--levels', default='1,4,16', help='wrk connections (%(default)s)')
    parser.add_argument('--wsgi-daemon', metavar='OPTIONS',
                        help="e.g. 'processes=1 threads=10' instead of the shipped config's")
    parser.add_argument('--tmpdir', help='where databases go (default: the system temp dir)')
    parser.add_argument('--code', default=ROOT,
                        help='the folder receiver.py and storage.py are taken from (%(default)s)')
    parser.add_argument('--worker-inprocess', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global CODE
    CODE = os.path.abspath(args.code)
    if args.worker_inprocess:
        return inprocess_worker(json.loads(args.worker_inprocess))
    quick, parts = args.quick, args.parts.split(',')
    workdir = tempfile.mkdtemp(prefix='fibosms-bench-', dir=args.tmpdir)
    os.chmod(workdir, 0o755)     # the Apache daemons' user must reach the files inside
    if 'apache' in parts and shutil.which('apache2'):
        ensure_venv()
    started = time.time()
    results = {'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started)),
               'command': ' '.join(['python3', 'bench/run.py'] + sys.argv[1:]),
               'targets': TARGETS, 'machine': machine(args.python, workdir)}
    try:
        commit = subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--',
                                'receiver.py', 'storage.py'], capture_output=True,
                               text=True).stdout.strip()
        results['commit'] = commit + (' (receiver.py/storage.py modified)' if dirty else '')
        results['code'] = CODE
        if 'cgi' in parts:
            say('1. CGI cold start ...')
            results['cgi'] = bench_cgi(args.python, workdir, 12 if quick else 40)
        if 'inprocess' in parts:
            say('2. In-process ...')
            results['inprocess'] = bench_inprocess(args.python, workdir, 3 if quick else 15,
                                                   200 if quick else 500)
        if 'apache' in parts:
            say('3. Apache mod_wsgi ...')
            try:
                results['apache'] = bench_apache(
                    args.python, workdir, 1 if quick else 3, 2 if quick else 4,
                    [int(c) for c in args.levels.split(',')], 1000 if quick else 10000,
                    args.wsgi_daemon)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results['apache'] = {'skipped': 'failed: %s' % exc}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results['seconds'] = round(time.time() - started, 1)
    text = table(results)
    print(text)
    results['table'] = text
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))
    for name in ('latest.json', 'run-%s.json' % stamp):
        with open(os.path.join(RESULTS, name), 'w') as f:
            json.dump(results, f, indent=1, default=str)
    say('written: %s' % os.path.join(RESULTS, 'run-%s.json' % stamp))
    return 0


if __name__ == '__main__':
    sys.exit(main())
