"""What the reliability tests share: the figures they report, receiver.py run as a real
server or as a CGI process, plain HTTP pushes on 127.0.0.1, and checks of a database file.

This module holds no tests. The figures are added up by the tests through the `figures`
fixture, printed at the end of the run under "reliability figures" and kept in pytest's cache
(.pytest_cache/v/reliability/figures) for README's "Reliability" section:

    requests        requests sent (HTTP, CGI or straight to the WSGI app)
    answered_2      answers of 2 whose guid was then looked for in the database
    duplicates      pushes of a guid that had been pushed before
    kills           kill -9 of a server or CGI process that was still running
    faults          faults injected (each then met by a push answered 1)
    hostile_inputs  generated or hand-made hostile requests
    lost            guids answered 2 but then missing from the database
"""
import collections
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import DONE, RETRY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECEIVER = os.path.join(ROOT, 'receiver.py')
START_TIMEOUT = 15.0        # seconds for a server to say it is listening
REQUEST_TIMEOUT = 30.0      # seconds for one answer: well over the 5 s busy timeout
FIGURES = ('requests', 'answered_2', 'duplicates', 'kills', 'faults', 'hostile_inputs',
           'lost')


# -- The figures ------------------------------------------------------------------------------

class Figures(object):
    """A pytest plugin, registered by the first test that asks for `figures`."""

    name = 'fibosms-reliability-figures'

    def __init__(self, config):
        self.config = config
        self.counts = collections.Counter(dict.fromkeys(FIGURES, 0))
        self.started = time.time()

    def pytest_terminal_summary(self, terminalreporter):
        data = dict(self.counts)
        data.update(python=sys.version.split()[0], sqlite=sqlite3.sqlite_version,
                    seconds=round(time.time() - self.started, 1))
        if getattr(self.config, 'cache', None) is not None:
            self.config.cache.set('reliability/figures', data)
        terminalreporter.section('reliability figures')
        terminalreporter.write_line(json.dumps(data, sort_keys=True))


@pytest.fixture
def figures(request):
    """The run's Counter of FIGURES; add to it what the test did."""
    manager = request.config.pluginmanager
    plugin = manager.get_plugin(Figures.name)
    if plugin is None:
        plugin = Figures(request.config)
        manager.register(plugin, Figures.name)
    return plugin.counts


# -- receiver.py as a server and as a CGI process ---------------------------------------------

class Server(object):
    """`python3 receiver.py --port 0 --db DB` in a process of its own, listening on 127.0.0.1.

    `env` is added to the process environment; stderr (the error log) goes to a file, read
    with `log()`. `kill()` is kill -9; `stop()` always ends the process.
    """

    def __init__(self, db, log_path, env=None):
        self.db, self.log_path = db, log_path
        environ = dict(os.environ)
        environ.update(env or {})
        with open(log_path, 'ab') as log:
            self.process = subprocess.Popen(
                [sys.executable, RECEIVER, '--host', '127.0.0.1', '--port', '0', '--db', db],
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
    """GET path?query on the server at `port`: (status, body) or (None, None)."""
    return http_request(port, 'GET', path + '?' + query)


def cgi_environ(db, query, method='GET', body=b'', extra=None):
    """A CGI/1.1 environment such as Apache gives receiver.py for one push."""
    env = {
        'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'LANG': 'C.UTF-8',
        'GATEWAY_INTERFACE': 'CGI/1.1', 'SERVER_PROTOCOL': 'HTTP/1.1',
        'SERVER_SOFTWARE': 'test', 'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '80',
        'REQUEST_METHOD': method, 'SCRIPT_NAME': '/receiver.cgi', 'PATH_INFO': '',
        'QUERY_STRING': query, 'REMOTE_ADDR': '127.0.0.1', 'FIBOSMS_DB': db,
    }
    if body:
        env.update(CONTENT_LENGTH=str(len(body)),
                   CONTENT_TYPE='application/x-www-form-urlencoded')
    env.update(extra or {})
    return env


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


# -- Checks of a database file ----------------------------------------------------------------

def integrity(db):
    """PRAGMA integrity_check's verdict, one string ('ok' when the file is sound)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return ', '.join(r[0] for r in conn.execute('PRAGMA integrity_check'))
    finally:
        conn.close()


def deliveries(db):
    """{guid: deliveries} of every stored message; asserts each guid is there once."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        pairs = conn.execute('SELECT guid, deliveries FROM messages').fetchall()
    finally:
        conn.close()
    counts = dict(pairs)
    assert len(counts) == len(pairs), 'a guid is stored more than once'
    return counts


def answer_is_status_document(status, body):
    """The answer is the gateway's document, 2 with 200 and 1 with any other code."""
    return status is not None and body == (DONE if status == 200 else RETRY)
