"""Crashes: kill -9 of the threaded server, of CGI processes and of Apache's mod_wsgi daemon
processes in the middle of a load.

The client side records every guid answered <Status>2</Status>. After each kill: every one of
them is in the database, once; PRAGMA integrity_check says ok; and the gateway's next retry of
every guid that got no answer is answered 2 (whether or not its first delivery had committed).
"""
import os
import random
import signal
import threading
import time

from conftest import DONE, RETRY
from support import Server, cgi_answer, deliveries, integrity, push, run_cgi, start_cgi
from test_reliability_storms import apache_mod_wsgi  # noqa: F401  (a fixture)

SERVER_KILLS = 8            # rounds of load, each ended by kill -9 of the server
CLIENTS = 4                 # concurrent clients during a round
CGI_PROCESSES = 56          # CGI processes started, most after the first 8 killed
CGI_AT_ONCE = 8
WSGI_KILLS = 4              # rounds of load, each ended by kill -9 of the mod_wsgi daemons


def query(guid):
    return 'message=crash+test+%s&phone=0912345678&guid=%s' % (guid, guid)


class Ledger(object):
    """What the gateway knows: guids answered 2, and guids sent without an answer of 2."""

    def __init__(self):
        self.lock = threading.Lock()
        self.answered = set()
        self.unanswered = set()
        self.sent = set()
        self.requests = self.duplicates = self.answers_of_2 = 0

    def record(self, guid, status, body):
        with self.lock:
            self.requests += 1
            self.duplicates += guid in self.sent
            self.sent.add(guid)
            if status == 200 and body == DONE:
                self.answers_of_2 += 1
                self.answered.add(guid)
                self.unanswered.discard(guid)
            elif guid not in self.answered:
                self.unanswered.add(guid)

    def check(self, db):
        """Nothing answered 2 is missing; the file is sound. Returns how many were lost."""
        assert integrity(db) == 'ok'
        stored = deliveries(db)         # also asserts one row per guid
        return len(self.answered - set(stored))


def load(send, ledger, prefix, stop):
    """CLIENTS threads pushing new guids (and now and then one already answered) with
    send(guid) -> (status, body) until `stop` is set."""
    def client(k):
        rng = random.Random(prefix + str(k))
        for n in range(100000):
            if stop.is_set():
                return
            guid = '%s-%d-%d' % (prefix, k, n)
            if ledger.answered and rng.random() < 0.2:   # a gateway retry of a done guid
                with ledger.lock:
                    guid = rng.choice(sorted(ledger.answered))
            status, body = send(guid)
            ledger.record(guid, status, body)
            if status is None:
                stop.wait(0.05)         # the server is down: as the gateway, wait a little
    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def test_kill_9_of_the_server_under_load_loses_no_answered_push(tmp_path, figures):
    """kill -9 of the server mid-load, 8 times: every guid answered 2 survives each restart."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    ledger, rng, lost = Ledger(), random.Random(1), 0
    for round_ in range(SERVER_KILLS + 1):
        with Server(db, str(tmp_path / 'server.log')) as server:
            for guid in sorted(ledger.unanswered):           # the gateway's next retry
                status, body = push(server.port, query(guid))
                ledger.record(guid, status, body)
                assert (status, body) == (200, DONE), (guid, status, body)
            if round_ == SERVER_KILLS:
                break
            stop = threading.Event()
            threads = load(lambda g: push(server.port, query(g)), ledger, 'r%d' % round_, stop)
            time.sleep(rng.uniform(0.2, 0.5))
            server.kill()
            stop.set()
            for thread in threads:
                thread.join(60)
            assert not any(t.is_alive() for t in threads)
        figures['kills'] += 1
        lost += ledger.check(db)
    lost += ledger.check(db)
    figures['requests'] += ledger.requests
    figures['duplicates'] += ledger.duplicates
    figures['answered_2'] += ledger.answers_of_2
    figures['lost'] += lost
    assert lost == 0
    assert len(ledger.answered) > SERVER_KILLS * 20, 'the load was too light to prove much'
    assert not ledger.unanswered


def test_kill_9_of_cgi_processes_loses_no_answered_push(tmp_path, figures):
    """56 CGI processes, 8 at a time, most killed at a random moment: every 2 survives."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    ledger, rng = Ledger(), random.Random(2)
    guids = ['cgi-%02d' % n for n in range(CGI_PROCESSES)]
    # One push first, unharmed and untimed: it makes the database and the bytecode cache, which
    # would make the first wave's life, and so every planned kill, too long (a new Python).
    out, _ = start_cgi(db, query('cgi-warm')).communicate(timeout=30)
    ledger.record('cgi-warm', *cgi_answer(out))
    # A first wave, unharmed, times a process's life from its start. Each is timed from its
    # own start: starting 8 processes from a large parent takes a while where subprocess
    # forks rather than vforks (Python before 3.10).
    first = [(g, time.monotonic(), start_cgi(db, query(g))) for g in guids[:CGI_AT_ONCE]]
    lives = {}
    while len(lives) < len(first) and time.monotonic() < first[0][1] + 30:
        for guid, started, process in first:
            if guid not in lives and process.poll() is not None:
                lives[guid] = time.monotonic() - started
        time.sleep(0.002)
    for guid, _, process in first:
        out, _ = process.communicate(timeout=30)
        ledger.record(guid, *cgi_answer(out))
    life = sorted(lives.values())[len(lives) // 2]
    killed = []
    for wave in range(CGI_AT_ONCE, CGI_PROCESSES, CGI_AT_ONCE):
        # Most processes get a moment to die at, spread over their life: before, during or
        # after their transaction. A timer kills each as the next ones start, which from a
        # large parent may take longer than a process lives.
        batch, timers = [], []
        for guid in guids[wave:wave + CGI_AT_ONCE]:
            started, process = time.monotonic(), start_cgi(db, query(guid))
            batch.append((guid, process))
            if rng.random() < 0.8:
                at = started + rng.uniform(0.05, 0.8) * life
                timers.append(threading.Timer(max(0.0, at - time.monotonic()),
                                              kill_if_running, (process, killed)))
                timers[-1].start()
        for timer in timers:
            timer.join()
        for guid, process in batch:
            out, _ = process.communicate(timeout=30)
            ledger.record(guid, *cgi_answer(out))
        assert ledger.check(db) == 0
    kills = len(killed)
    assert kills >= CGI_PROCESSES // 8, 'too few processes were killed mid-flight'
    for guid in sorted(ledger.unanswered):                   # the gateway's next retry
        code, body, err = run_cgi(db, query(guid))
        assert (code, body) == (200, DONE), (guid, code, body, err)
        ledger.record(guid, code, body)
    lost = ledger.check(db)
    figures['lost'] += lost
    assert lost == 0
    assert set(deliveries(db)) == set(guids) | {'cgi-warm'}
    figures['kills'] += kills
    figures['requests'] += ledger.requests
    figures['duplicates'] += ledger.duplicates
    figures['answered_2'] += ledger.answers_of_2


def kill_if_running(process, killed):
    if process.poll() is None:
        process.kill()
        killed.append(process.pid)


def wsgi_daemons(ws):
    """The process ids of the mod_wsgi daemon processes of the Apache in workspace `ws`."""
    pids = []
    for name in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                argv = f.read().split(b'\0')
        except (OSError, ValueError):
            continue
        if argv[0].startswith(b'(wsgi:') and ws.base.encode() in b' '.join(argv):
            pids.append(int(name))
    return pids


def retry_until_done(send, ledger, guid, seconds=30.0):
    """The gateway retrying `guid` until it is answered 2 (while Apache restarts daemons)."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = send(guid)
        ledger.record(guid, status, body)
        if (status, body) == (200, DONE) or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def test_kill_9_of_mod_wsgi_daemons_under_load_loses_no_answered_push(apache_mod_wsgi,
                                                                     figures):
    """kill -9 of the mod_wsgi daemon processes mid-load, 4 times: every 2 survives."""
    send, ws = apache_mod_wsgi
    ledger, rng, kills = Ledger(), random.Random(3), 0
    for round_ in range(WSGI_KILLS + 1):
        for guid in sorted(ledger.unanswered) or ['probe-%d' % round_]:
            assert retry_until_done(send, ledger, guid) == (200, DONE), guid
        if round_ == WSGI_KILLS:
            break
        stop = threading.Event()
        threads = load(send, ledger, 'w%d' % round_, stop)
        time.sleep(rng.uniform(0.2, 0.5))
        daemons = wsgi_daemons(ws)      # both, unless Apache is still starting one again
        assert daemons
        for pid in daemons:
            os.kill(pid, signal.SIGKILL)
        kills += len(daemons)
        time.sleep(0.3)                 # pushes go on while Apache starts new daemons
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads)
        assert ledger.check(ws.db) == 0
    lost = ledger.check(ws.db)
    figures['kills'] += kills
    figures['requests'] += ledger.requests
    figures['duplicates'] += ledger.duplicates
    figures['answered_2'] += ledger.answers_of_2
    figures['lost'] += lost
    assert lost == 0 and not ledger.unanswered
    assert ledger.answers_of_2 > WSGI_KILLS * 20, 'the load was too light to prove much'


def test_mod_wsgi_daemon_killed_mid_request_still_answers_a_status_document(apache_mod_wsgi,
                                                                            figures):
    """While its daemons die and restart, the mod_wsgi site answers nothing but <Status>."""
    send, ws = apache_mod_wsgi
    ledger, answers = Ledger(), []

    def send_and_keep(guid):
        status, body = send(guid)
        answers.append((status, body))
        return status, body
    assert retry_until_done(send, ledger, 'probe') == (200, DONE)
    stop = threading.Event()
    threads = load(send_and_keep, ledger, 'k', stop)
    for _ in range(3):
        time.sleep(0.3)
        for pid in wsgi_daemons(ws):
            os.kill(pid, signal.SIGKILL)
            figures['kills'] += 1
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    figures['requests'] += ledger.requests
    figures['answered_2'] += ledger.answers_of_2
    others = sorted({(s, b[:60]) for s, b in answers if s is not None and b not in (DONE, RETRY)})
    assert not others, 'answers that are not Status documents: %r' % others
    assert ledger.check(ws.db) == 0
