"""Forwarding in real deployments: a push through the shipped mod_wsgi and CGI set-ups, the
forward set in the data folder's settings.env, to deploy/consumer.php under php -S; store
first there, with forward.py missing and with an application that hangs; `python3
receiver.py` run as a CGI process forwarding within its own process; and kill -9 of the small
server while a forward is in flight."""
import base64
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import oracle
import receiver
import storage
import support
from conftest import DONE, RETRY, ROOT, rows
from support import PHONE, TOKEN, VIETNAMESE, Application, Consumer, Server, free_port
from support import push, run_cgi

SECRET = 'whsec_' + base64.b64encode(bytes(range(80, 112))).decode()


@pytest.fixture(scope='module')
def consumer_folder():
    folder = tempfile.mkdtemp(prefix='fibosms-consumer-')
    yield folder
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='module')
def consumer(consumer_folder):
    """deploy/consumer.php under php -S, shared by this module's Apache tests."""
    server = Consumer(SECRET, os.path.join(consumer_folder, 'data', 'consumer.sqlite3'),
                      os.path.join(consumer_folder, 'php.log'))
    yield server
    server.stop()


def forwarding(ws, url):
    """The data folder's settings.env with the forwarding lines of the template switched on."""
    ws.settings(replace=[
        ('#FIBOSMS_FORWARD_URL=https://example.com/app/consumer.php',
         'FIBOSMS_FORWARD_URL=' + url),
        ('#FIBOSMS_FORWARD_SECRET=whsec_change-me', 'FIBOSMS_FORWARD_SECRET=' + SECRET)])


@pytest.fixture(scope='module', params=['mod_wsgi', 'cgi'])
def site(request, consumer):
    """A shipped set-up whose settings file forwards to the consumer."""
    ws = support.Workspace('forward-' + request.param)
    forwarding(ws, consumer.url)
    front = support.start(request.param, ws)
    yield front
    front.stop()


def test_push_is_forwarded_to_the_php_consumer(site, consumer):
    """A Vietnamese push is answered 2 once consumer.php has handled it; no log holds it."""
    guid, response = site.push()
    assert (response.status, response.body) == (200, DONE), (response, site.logs(),
                                                             consumer.log())
    assert (guid, PHONE, VIETNAMESE) in [row[:3] for row in consumer.rows('sms')]
    [row] = support.stored(site.db, guid)
    assert (row['state'], row['hook_runs']) == ('processed', 1)
    assert guid not in ''.join(site.logs().values())


def test_consumer_down_answers_try_again_then_the_retry_forwards(site, consumer,
                                                                 consumer_folder):
    """With the application down the push gets 200 <Status>1</Status> and one log line
    naming host and error (in receiver.log too); once it is back, the gateway's retry is
    forwarded and answered 2."""
    consumer.stop()
    try:
        guid, response = site.push(message='down')
        assert (response.status, response.body) == (200, RETRY), response
    finally:
        consumer.__init__(SECRET, consumer.db, os.path.join(consumer_folder, 'php2.log'),
                          port=consumer.port)
    [row] = support.stored(site.db, guid)
    assert row['state'] == 'failed'
    lines = [line for line in site.ws.receiver_log().splitlines() if guid in line]
    assert len(lines) == 1, site.ws.receiver_log()
    assert 'forward to 127.0.0.1:%d: ConnectionRefusedError' % consumer.port in lines[0]
    for name, text in site.logs().items():
        for private in ('down', PHONE, SECRET[6:], TOKEN):
            assert private not in text, (name, private)
    _, response = site.push(message='down', guid=guid)
    assert (response.status, response.body) == (200, DONE), response
    assert guid in [row[0] for row in consumer.rows('sms')]


# -- Store first, on the real set-ups ---------------------------------------------------------

@pytest.mark.parametrize('name', ['cgi', 'mod_wsgi', 'passenger'])
def test_forward_set_with_only_receiver_and_storage_uploaded_still_stores(name, consumer):
    """Only receiver.py and storage.py uploaded (the two files older README steps listed),
    forwarding set: every push is stored, marked failed with the reason, answered try again,
    and receiver.log tells the owner to upload forward.py; once it is there, the gateway's
    retry forwards the stored message and gets 2."""
    ws = support.Workspace('only-two-' + name)
    for module in support.CODE:
        if module not in ('receiver.py', 'storage.py'):
            os.remove(os.path.join(ws.app, module))
    forwarding(ws, consumer.url)
    front = support.start(name, ws)
    try:
        guid, response = front.push()
        assert (response.status, response.body) == (200, RETRY), response
        [row] = support.stored(front.db, guid)
        assert row['state'] == 'failed' and row['message'] == VIETNAMESE
        assert ("hooks.py" in row['last_error'] or 'forward.py' in row['last_error'])
        log = ''.join(front.logs().values())    # the server's error log: no ownerlog.py
        assert 'hooks.py is not beside receiver.py: upload it' in log, log
        for module in support.CODE:
            ws.copy(os.path.join(support.ROOT, module), os.path.join(ws.app, module), 0o644)
        if name == 'passenger':
            os.makedirs(os.path.join(ws.app, 'tmp'), exist_ok=True)
            open(os.path.join(ws.app, 'tmp', 'restart.txt'), 'w').close()
        elif name == 'mod_wsgi':
            later = time.time() + 5
            os.utime(os.path.join(ws.app, 'receiver.py'), (later, later))
        deadline = time.monotonic() + 20
        while True:
            _, response = front.push(guid=guid)
            if response.body == DONE or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert response.body == DONE, (response, ws.receiver_log())
        assert support.stored(front.db, guid)[0]['state'] == 'processed'
        assert guid in [row[0] for row in consumer.rows('sms')]
    finally:
        front.stop()


@pytest.mark.parametrize('name', ['small_server', 'mod_wsgi'])
def test_a_hung_application_never_keeps_pushes_from_being_stored(name):
    """The application accepts connections and never answers; 40 pushes at once: every one
    is a row within a few seconds. At most storage.MAX_HOOKS wait for their forward (their
    claims live); the others are stored failed ('hooks were running') and answered try
    again at once, so no worker is held by more than MAX_HOOKS hung forwards."""
    app = Application()
    app.hang = 60
    ws = support.Workspace('hung-' + name)
    forwarding(ws, app.url)
    front = support.start(name, ws)
    answers = []
    try:
        guids = [support.new_guid() for _ in range(40)]
        threads = [threading.Thread(target=lambda g=g: answers.append(front.push(guid=g)))
                   for g in guids]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        deadline = began + 8
        while len(rows(front.db)) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        stored_in = time.monotonic() - began
        assert len(rows(front.db)) == 40, (len(rows(front.db)), ws.receiver_log()[-2000:])
        assert stored_in < 8
        states = [row['state'] for row in rows(front.db)]
        assert states.count('processing') <= storage.MAX_HOOKS, states
        assert 'hook not started: %d hooks were running' % storage.MAX_HOOKS in (
            ws.receiver_log())
    finally:
        app.release.set()
        for thread in threads:
            thread.join(60)
        app.stop()
        front.stop()
    assert len(answers) == 40 and all(a[1].body in (DONE, RETRY) for a in answers)


# -- receiver.py as a CGI process -------------------------------------------------------------

def test_cgi_push_is_forwarded_within_its_process(db, tmp_path):
    """receiver.py run as CGI forwards to consumer.php before it answers: a Windows-1258
    message arrives there as its text, and the gateway gets 2."""
    consumer = Consumer(SECRET, str(tmp_path / 'c' / 'consumer.sqlite3'),
                        str(tmp_path / 'php.log'))
    try:
        # Raw bytes, as a web server passes them (os.fsdecode: the environment gets them back)
        query = os.fsdecode(b'guid=g-cgi&phone=0912345678&message=Ch\xe0o+b\xe9n+Vi\xea\xf2t')
        settings = {'FIBOSMS_FORWARD_URL': consumer.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
        assert run_cgi(db, query, extra=settings) == (200, DONE, ''), consumer.log()
        [sms] = consumer.rows('sms')
        assert sms[:3] == ('g-cgi', '0912345678', 'Chào bén Vi\u00ea\u0323t')
        assert rows(db)[0]['charset'] == 'cp1258'
    finally:
        consumer.stop()


def test_cgi_push_with_the_application_down_answers_1(db):
    """A CGI push whose forward is refused answers 200 <Status>1</Status>, one log line."""
    port = free_port()
    status, body, err = run_cgi(db, 'guid=g-1&phone=0912345678&message=hi',
                                extra={'FIBOSMS_FORWARD_URL': 'http://127.0.0.1:%d/' % port})
    assert (status, body) == (200, RETRY)
    assert err.splitlines() == ["fibosms-receiver: answered 1 (HTTP 200): hook failed: forward"
                                " to 127.0.0.1:%d: ConnectionRefusedError (guid 'g-1')" % port]
    assert rows(db)[0]['state'] == 'failed'


def test_cgi_push_to_a_hung_application_answers_1_at_the_forward_timeout(db):
    """An application that never answers: the CGI push gets 200 <Status>1</Status> after
    forward.TIMEOUT, before the hook's 20 s, and the row is failed, its claim released."""
    import forward
    app = Application()
    app.hang = 60
    try:
        start = time.monotonic()
        code, body, err = run_cgi(db, 'guid=g-1&phone=0912345678&message=hi',
                                  extra={'FIBOSMS_FORWARD_URL': app.url,
                                         'FIBOSMS_FORWARD_SECRET': SECRET})
        elapsed = time.monotonic() - start
    finally:
        app.stop()
    assert (code, body) == (200, RETRY)
    assert forward.TIMEOUT <= elapsed < receiver.HOOK_WAIT
    assert 'no answer within %g s' % forward.TIMEOUT in err
    [row] = rows(db)
    assert (row['state'], row['claimed_until']) == ('failed', None)
    assert oracle.verify(SECRET, [(r.headers, r.body) for r in app.requests]) == ['ok']


# -- kill -9 while a forward is in flight -----------------------------------------------------

def expire_claim(db, guid):
    """Move the claim's end into the past, as CLAIM_SECONDS passing would."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute('UPDATE messages SET claimed_until = ? WHERE guid = ?',
                     (time.time() - 1, guid))
    conn.close()


def kill_during_forward(db, tmp_path, app, guid):
    """Push `guid` to a server forwarding to `app` (which hangs), kill -9 the server once the
    forward has arrived; return the application's request."""
    app.hang = 60
    env = {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
    server = Server(db, str(tmp_path / 'server.log'), env)
    answers = []
    try:
        query = 'message=kill+test&phone=0912345678&guid=%s' % guid
        pusher = threading.Thread(target=lambda: answers.append(push(server.port, query)))
        pusher.start()
        assert app.arrived.wait(10), server.log()
        server.kill()
        pusher.join(30)
    finally:
        server.stop()
    assert answers and answers[0][1] != DONE, answers
    [row] = rows(db)
    assert (row['guid'], row['state']) == (guid, 'processing')
    assert row['claimed_until'] > time.time()
    app.release.set()
    app.hang = 0
    [request] = app.requests
    return request


def test_kill_9_during_a_forward_then_the_gateway_retry_forwards_again(db, tmp_path):
    """kill -9 of the server mid-forward: the message is in the database; after restart a
    retry within the claim gets 1, and once it expired the retry forwards it again with the
    same webhook-id and is answered 2."""
    app = Application()
    try:
        first = kill_during_forward(db, tmp_path, app, 'g-kill')
        env = {'FIBOSMS_FORWARD_URL': app.url, 'FIBOSMS_FORWARD_SECRET': SECRET}
        with Server(db, str(tmp_path / 'server2.log'), env) as server:
            query = 'message=kill+test&phone=0912345678&guid=g-kill'
            assert push(server.port, query) == (200, RETRY)
            assert len(app.requests) == 1
            expire_claim(db, 'g-kill')
            assert push(server.port, query) == (200, DONE)
        second = app.requests[1]
        assert first.headers['webhook-id'] == second.headers['webhook-id'] == 'g-kill'
        [row] = rows(db)
        assert (row['state'], row['deliveries']) == ('processed', 3)
        assert oracle.verify(SECRET, [(r.headers, r.body) for r in app.requests]) == ['ok'] * 2
    finally:
        app.stop()


def test_kill_9_during_a_forward_then_storage_retry_forwards_again(db, tmp_path):
    """kill -9 of the server mid-forward: once the claim expired, `storage.py retry` forwards
    the message again with the same webhook-id."""
    app = Application()
    try:
        first = kill_during_forward(db, tmp_path, app, 'g-kill')
        expire_claim(db, 'g-kill')
        env = {k: v for k, v in os.environ.items() if not k.startswith('FIBOSMS_')}
        env.update(FIBOSMS_FORWARD_URL=app.url, FIBOSMS_FORWARD_SECRET=SECRET)
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'storage.py'), '--db', db, 'retry'], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert (done.returncode, done.stdout) == (0, b'g-kill processed\n'), done.stderr
        assert app.requests[1].headers['webhook-id'] == first.headers['webhook-id']
        assert rows(db)[0]['state'] == 'processed'
        assert oracle.verify(SECRET, [(r.headers, r.body) for r in app.requests]) == ['ok'] * 2
    finally:
        app.stop()
