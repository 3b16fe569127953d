"""The processing hook: when it runs, what its outcome does to the row and to the answer, that
it runs once per message and never twice at once, and `storage.py retry`."""
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

import receiver
import smallserver
import storage
from conftest import DONE, RETRY, ROOT, rows

PUSH = '/?guid=g-1&phone=0912345678&message=hello'


class Hook:
    """A hook that records each call; it raises while `failing`, and waits for `release`
    when `blocking`."""

    def __init__(self, failing=False, blocking=False):
        self.calls = []
        self.failing = failing
        self.blocking = blocking
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, message):
        self.calls.append(message['guid'])
        self.started.set()
        if self.blocking:
            self.release.wait(10)
        if self.failing:
            raise ValueError('out of stock')


def wait_for_state(db, guid, state, seconds=5.0):
    """Poll until the row of `guid` is in `state` (a hook thread may still be finishing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [r for r in rows(db) if r['guid'] == guid]
        if found and found[0]['state'] == state:
            return found[0]
        time.sleep(0.02)
    raise AssertionError('%s never reached state %s' % (guid, state))


@pytest.fixture
def hook_module(tmp_path, monkeypatch):
    """hook_module(source) -> the name of a new module in tmp_path/hooks, importable."""
    folder = tmp_path / 'hooks'
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    names = []

    def write(source):
        name = 'fibosms_hook_%s' % uuid.uuid4().hex
        (folder / (name + '.py')).write_text(source, encoding='utf-8')
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


RECORDING_HOOK = '''
import json, os

def handle(message):
    with open(os.path.join(os.path.dirname(__file__), 'calls.jsonl'), 'a',
              encoding='utf-8') as f:
        f.write(json.dumps(message, ensure_ascii=False) + '\\n')
    if message['message'].startswith('FAIL'):
        raise RuntimeError('cannot handle ' + message['guid'])
'''


def recorded_calls(tmp_path):
    import json
    path = tmp_path / 'hooks' / 'calls.jsonl'
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines()]


# -- Outcomes ---------------------------------------------------------------------------------

def test_hook_success_marks_processed(make_client, db):
    """A hook that returns marks the row processed and the push is answered 2."""
    hook = Hook()
    res = make_client(handler=hook).get(PUSH)
    assert res.body == DONE
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['last_error']) == ('processed', 1, None)
    assert row['processed_at'] and row['claimed_until'] is None
    assert hook.calls == ['g-1']


def test_hook_gets_the_stored_row(make_client):
    """The hook is called with the stored row as a dict of columns."""
    seen = []
    make_client(handler=seen.append).get('/', {'guid': 'g-1', 'phone': '0912345678',
                                               'message': 'Xin chào'})
    [message] = seen
    assert (message['guid'], message['phone'], message['message']) == (
        'g-1', '0912345678', 'Xin chào')
    assert message['phone_normalised'] == '84912345678'


def test_hook_failure_records_the_traceback(make_client, db):
    """A hook that raises leaves state 'failed' and its traceback in last_error."""
    make_client(handler=Hook(failing=True)).get(PUSH, status=200, expect_errors=True)
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['claimed_until']) == ('failed', 1, None)
    assert row['last_error'].startswith('Traceback (most recent call last)')
    assert 'ValueError: out of stock' in row['last_error']
    assert row['processed_at'] is None


def test_hook_failure_answers_try_again_with_status_1(make_client):
    """A hook that raises makes the push answer 200 <Status>1</Status> with one log line."""
    res = make_client(handler=Hook(failing=True)).get(PUSH, status=200, expect_errors=True)
    assert res.body == RETRY
    [line] = res.errors.splitlines()
    assert 'hook failed: ValueError' in line and "'g-1'" in line
    assert 'out of stock' not in res.body.decode()


def test_hook_calling_sys_exit_is_recorded_as_failed(make_client, db):
    """A hook that calls sys.exit() fails like one that raises: state 'failed', no claim left."""
    def hook(message):
        sys.exit(3)

    res = make_client(handler=hook).get(PUSH, status=200, expect_errors=True)
    assert res.body == RETRY
    assert 'still running' not in res.errors
    [row] = rows(db)
    assert (row['state'], row['claimed_until']) == ('failed', None)
    assert 'SystemExit' in row['last_error']


def test_gateway_retry_runs_a_failed_hook_again(make_client, db):
    """After a failure, the gateway's next delivery runs the hook again and gets 2."""
    hook = Hook(failing=True)
    client = make_client(handler=hook)
    client.get(PUSH, status=200, expect_errors=True)
    hook.failing = False
    assert client.get(PUSH).body == DONE
    assert hook.calls == ['g-1', 'g-1']
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['deliveries']) == ('processed', 2, 2)
    assert row['last_error'] is None


def test_hook_never_runs_again_after_success(make_client, db):
    """Once processed, later deliveries answer 2 without calling the hook."""
    hook = Hook()
    client = make_client(handler=hook)
    for _ in range(4):
        assert client.get(PUSH).body == DONE
    assert hook.calls == ['g-1']
    assert rows(db)[0]['deliveries'] == 4


def test_no_hook_stores_processed(client, db):
    """Without a hook the push is stored as processed and answered 2."""
    assert client.get(PUSH).body == DONE
    [row] = rows(db)
    assert (row['state'], row['hook_runs'], row['claimed_until']) == ('processed', 0, None)
    assert row['processed_at'] == row['received_at']


# -- Claims -----------------------------------------------------------------------------------

@pytest.fixture
def served():
    """served(app) -> the base URL of a real threaded receiver.make_server on 127.0.0.1."""
    servers = []

    def serve(app):
        server = smallserver.make_server('127.0.0.1', 0, app)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return 'http://127.0.0.1:%d' % server.server_address[1]

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fetch(url):
    """(HTTP status, body) of a GET; 4xx and 5xx answers too."""
    try:
        with urllib.request.urlopen(url, timeout=15) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def test_hook_never_runs_twice_at_once(served, db):
    """While the hook runs for a guid, a second delivery of it answers try again (HTTP 200,
    <Status>1</Status>) without a call."""
    hook = Hook(blocking=True)
    base = served(receiver.make_app(db=db, handler=hook))
    first = []
    thread = threading.Thread(target=lambda: first.append(fetch(base + PUSH)))
    thread.start()
    try:
        assert hook.started.wait(5)
        assert fetch(base + PUSH) == (200, RETRY)
    finally:
        hook.release.set()
        thread.join(15)
    assert first == [(200, DONE)]
    assert hook.calls == ['g-1']
    [row] = rows(db)
    assert (row['state'], row['deliveries'], row['hook_runs']) == ('processed', 2, 1)


def set_claim(db, guid, claimed_until):
    """Leave a claim as a process that died while running the hook would."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE messages SET state = 'processing', claimed_until = ? WHERE guid = ?",
                     (claimed_until, guid))
    conn.close()


@pytest.mark.parametrize('offset, status, calls', [
    (-1.0, 200, ['g-1']),           # expired: the crashed process's claim is taken over
    (-storage.CLAIM_SECONDS, 200, ['g-1']),
    (+60.0, 'busy', []),            # live: the hook may be running elsewhere
])
def test_claim_expires(client, make_client, db, offset, status, calls):
    """A claim left behind is taken over once claimed_until has passed, and not before."""
    client.get(PUSH)
    set_claim(db, 'g-1', time.time() + offset)
    hook = Hook()
    res = make_client(handler=hook).get(PUSH, expect_errors=True)
    assert res.status_int == 200 and res.body == (RETRY if status == 'busy' else DONE)
    assert hook.calls == calls


def test_hanging_hook_answers_try_again_in_time_and_keeps_its_claim(make_client, db,
                                                                   monkeypatch):
    """A hook running past receiver.HOOK_WAIT gets try again soon after it; the claim stays
    live."""
    monkeypatch.setattr(receiver, 'HOOK_WAIT', 0.3)
    hook = Hook(blocking=True)
    client = make_client(handler=hook)
    try:
        start = time.monotonic()
        res = client.get(PUSH, status=200, expect_errors=True)
        elapsed = time.monotonic() - start
        assert res.body == RETRY
        assert 'still running' in res.errors
        assert 0.3 <= elapsed < 0.3 + 1.5
        [row] = rows(db)
        assert row['state'] == 'processing'
        assert row['claimed_until'] > time.time() + storage.CLAIM_SECONDS - 60
        assert client.get(PUSH, status=200, expect_errors=True).body == RETRY
    finally:
        hook.release.set()
    row = wait_for_state(db, 'g-1', 'processed')
    assert hook.calls == ['g-1']
    assert row['hook_runs'] == 1


# -- Hooks named by module:function -----------------------------------------------------------

@pytest.mark.parametrize('where', ['wsgi environ', 'os.environ'])
def test_handler_from_environment(make_client, db, tmp_path, hook_module, monkeypatch, where):
    """FIBOSMS_HANDLER=module:function, from the WSGI environ or the process, is run."""
    spec = hook_module(RECORDING_HOOK) + ':handle'
    if where == 'wsgi environ':
        client = make_client(extra_environ={'FIBOSMS_HANDLER': spec})
    else:
        monkeypatch.setenv('FIBOSMS_HANDLER', spec)
        client = make_client()
    assert client.get('/', {'guid': 'g-1', 'phone': '0912345678', 'message': 'Xin chào'}
                      ).body == DONE
    assert [(c['guid'], c['message']) for c in recorded_calls(tmp_path)] == [('g-1', 'Xin chào')]
    assert rows(db)[0]['state'] == 'processed'


@pytest.mark.parametrize('source, spec', [
    (None, 'fibosms_no_such_module:handle'),
    ('def other(message):\n    pass\n', '{name}:handle'),
    ('raise ImportError("needs a library that is not installed")\n', '{name}:handle'),
    ('def handle(message:\n', '{name}:handle'),
    ('handle = 42\n', '{name}:handle'),
    ('def handle(message):\n    pass\n', '{name}.handle'),
])
def test_hook_that_will_not_load_answers_try_again_and_keeps_the_message(
        make_client, db, hook_module, source, spec):
    """A FIBOSMS_HANDLER that cannot be loaded answers 200 <Status>1</Status> with one log
    line, and the message is stored all the same, marked failed with the reason."""
    name = hook_module(source) if source else None
    client = make_client(extra_environ={'FIBOSMS_HANDLER': spec.format(name=name)})
    res = client.get(PUSH, status=200, expect_errors=True)
    assert res.body == RETRY
    [line] = res.errors.splitlines()
    assert 'hook failed' in line
    [row] = rows(db)
    assert row['state'] == 'failed' and 'Error' in row['last_error']


# -- storage.py retry -------------------------------------------------------------------------

def run_retry(db, tmp_path, spec):
    env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
    env['PYTHONPATH'] = str(tmp_path / 'hooks')
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db, 'retry',
         '--handler', spec], env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=30)


def fail_twice(make_client):
    """Store g-1 and g-2 with a hook that fails for both."""
    client = make_client(handler=Hook(failing=True))
    for guid in ('g-1', 'g-2'):
        client.get('/?guid=%s&phone=0912345678&message=FAIL' % guid, status=200,
                   expect_errors=True)


def test_retry_command_processes_failed_rows(make_client, db, tmp_path, hook_module):
    """`storage.py retry --handler` runs the hook over failed rows and exits 0 when all work."""
    fail_twice(make_client)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE messages SET message = 'fixed'")
    conn.close()
    done = run_retry(db, tmp_path, hook_module(RECORDING_HOOK) + ':handle')
    assert done.returncode == 0, done.stderr
    assert sorted(c['guid'] for c in recorded_calls(tmp_path)) == ['g-1', 'g-2']
    assert [(r['state'], r['hook_runs'], r['last_error']) for r in rows(db)] == [
        ('processed', 2, None)] * 2
    assert done.stdout.decode().split() == ['g-1', 'processed', 'g-2', 'processed']


def test_retry_command_exits_1_when_some_still_fail(make_client, db, tmp_path, hook_module):
    """`storage.py retry` exits 1 and names the guid when the hook fails again."""
    fail_twice(make_client)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE messages SET message = 'fixed' WHERE guid = 'g-2'")
    conn.close()
    done = run_retry(db, tmp_path, hook_module(RECORDING_HOOK) + ':handle')
    assert done.returncode == 1
    assert 'g-1 failed: RuntimeError' in done.stdout.decode()
    assert [(r['guid'], r['state']) for r in rows(db)] == [('g-1', 'failed'),
                                                          ('g-2', 'processed')]
    assert 'cannot handle g-1' in rows(db)[0]['last_error']


def test_retry_command_leaves_processed_rows_alone(client, db, tmp_path, hook_module):
    """`storage.py retry` does not call the hook for messages already processed."""
    client.get(PUSH)
    done = run_retry(db, tmp_path, hook_module(RECORDING_HOOK) + ':handle')
    assert done.returncode == 0
    assert recorded_calls(tmp_path) == []
