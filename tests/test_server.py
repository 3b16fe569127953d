"""`python3 receiver.py --port 0 --db PATH`: the small threaded server, as a real process on a
real socket on 127.0.0.1."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import DONE, ROOT, rows

TOKEN = 's3cret-t0ken'
VIETNAMESE = 'Đặt hàng: 3 áo dài, giao trước thứ Bảy'


def server_env():
    """Our environment without FIBOSMS_ settings and without forced unbuffered output."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith('FIBOSMS_') and k != 'PYTHONUNBUFFERED'}


class Server:
    """The running process, its URL and database, and its stderr lines as they come."""

    def __init__(self, db, env, cwd=None):
        self.db = db
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'receiver.py'), '--port', '0', '--db', db],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.listening = self.process.stdout.readline().decode().rstrip('\n')
        self.database = self.process.stdout.readline().decode().rstrip('\n')
        self.url = self.listening.split(' ', 2)[-1].rstrip('/')
        self.lines = queue.Queue()
        self.reader = threading.Thread(target=self.read_stderr, daemon=True)
        self.reader.start()

    def read_stderr(self):
        for line in iter(self.process.stderr.readline, b''):
            self.lines.put(line.decode('utf-8', 'replace').rstrip('\n'))

    def next_line(self, timeout=5.0):
        """The next stderr line, or None if none is written within `timeout` seconds."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self):
        """Ctrl-C, as an operator would stop it; kill only if that does not work."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(5)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def server(db):
    """The server on a free port, with FIBOSMS_TOKEN set, output not forced unbuffered."""
    env = server_env()
    env['FIBOSMS_TOKEN'] = TOKEN
    running = Server(db, env)
    yield running
    running.stop()


def push(server, guid, message='hello', phone='0912345678', token=TOKEN):
    """(HTTP status, body) of a push to /sms/TOKEN over a real socket."""
    query = urllib.parse.urlencode({'guid': guid, 'phone': phone, 'message': message})
    url = '%s/sms/%s?%s' % (server.url, token or 'push', query)
    try:
        with urllib.request.urlopen(url, timeout=15) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_prints_listening_address(server):
    """The first line of stdout is `Listening on http://127.0.0.1:PORT/` with the real port."""
    prefix = 'Listening on http://127.0.0.1:'
    assert server.listening.startswith(prefix) and server.listening.endswith('/')
    port = int(server.listening[len(prefix):-1])
    assert 0 < port < 65536


def test_prints_database_path(server, db):
    """The second line of stdout is `Database: PATH`, the absolute path given."""
    assert server.database == 'Database: %s' % db


def test_relative_db_is_made_absolute(tmp_path):
    """A relative --db is resolved against the starting directory, printed and used."""
    running = Server(os.path.join('data', 'messages.sqlite3'), server_env(), cwd=str(tmp_path))
    try:
        db = str(tmp_path / 'data' / 'messages.sqlite3')
        assert running.database == 'Database: %s' % db
        assert push(running, 'g-1', token=None) == (200, DONE)
        assert [r['guid'] for r in rows(db)] == ['g-1']
    finally:
        running.stop()


def test_push_over_a_socket_is_stored(server, db):
    """A push over a real socket answers 2 and is stored exactly."""
    assert push(server, 'g-1', VIETNAMESE) == (200, DONE)
    [row] = rows(db)
    assert (row['guid'], row['message'], row['remote_addr']) == ('g-1', VIETNAMESE, '127.0.0.1')


def test_wrong_token_is_refused(server, db):
    """A push to a URL without the token answers 403 and stores nothing."""
    url = '%s/sms/wrong?guid=g-1&phone=0912345678' % server.url
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=15)
    caught.value.close()
    assert caught.value.code == 403
    assert not os.path.exists(db) or rows(db) == []


def test_request_log_hides_query_message_and_token(server):
    """The request log line shows a fixed `/***` for the path, no query, no text."""
    push(server, 'g-log', VIETNAMESE)
    server.stop()
    lines = []
    while not server.lines.empty():
        lines.append(server.lines.get())
    [line] = [line for line in lines if '"GET ' in line]
    assert '"GET /*** HTTP' not in line and '/sms' not in line
    assert '"GET /***" 200' in line
    for secret in (TOKEN, 'g-log', '0912345678', '?', 'message', 'hello', 'Đặt'):
        assert secret not in line
    assert urllib.parse.quote('Đặt') not in line


def test_request_log_line_is_written_at_once(server):
    """The request log line reaches stderr while the server runs, not only when it stops."""
    push(server, 'g-1')
    line = server.next_line(timeout=3)
    assert line is not None and '"GET /***" 200' in line


@pytest.mark.parametrize('same_guid', [False, True])
def test_concurrent_pushes_all_answer_2(server, db, same_guid):
    """Pushes from several threads at once all answer 2; one row per guid."""
    count = 8
    barrier = threading.Barrier(count)
    answers = []

    def send(n):
        barrier.wait()
        answers.append(push(server, 'g-same' if same_guid else 'g-%d' % n, 'tin %d' % n))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(count)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert answers == [(200, DONE)] * count
    assert time.monotonic() - start < 10
    stored = rows(db)
    if same_guid:
        assert [(r['guid'], r['deliveries']) for r in stored] == [('g-same', count)]
    else:
        assert sorted(r['guid'] for r in stored) == sorted('g-%d' % n for n in range(count))
