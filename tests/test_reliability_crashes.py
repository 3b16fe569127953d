"""Crashes: kill -9 of the threaded server and of CGI processes in the middle of a load.

The client side records every guid answered <Status>2</Status>. After each kill: every one of
them is in the database, once; PRAGMA integrity_check says ok; and the gateway's next retry of
every guid that got no answer is answered 2 (whether or not its first delivery had committed).
"""
import random
import threading
import time

from test_reliability_common import (
    DONE, Server, deliveries, figures, integrity, push, run_cgi, start_cgi, cgi_answer)  # noqa: F401

SERVER_KILLS = 8            # rounds of load, each ended by kill -9 of the server
CLIENTS = 4                 # concurrent clients during a round
CGI_PROCESSES = 56          # CGI processes started, most after the first 8 killed
CGI_AT_ONCE = 8


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


def load(server, ledger, prefix, stop):
    """CLIENTS threads pushing new guids (and now and then one already answered) until the
    server stops answering or `stop` is set."""
    def client(k):
        rng = random.Random(prefix + str(k))
        for n in range(100000):
            if stop.is_set():
                return
            guid = '%s-%d-%d' % (prefix, k, n)
            if ledger.answered and rng.random() < 0.2:   # a gateway retry of a done guid
                with ledger.lock:
                    guid = rng.choice(sorted(ledger.answered))
            status, body = push(server.port, query(guid))
            ledger.record(guid, status, body)
            if status is None:
                return
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
            threads = load(server, ledger, 'r%d' % round_, stop)
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
    ledger, rng, kills = Ledger(), random.Random(2), 0
    guids = ['cgi-%02d' % n for n in range(CGI_PROCESSES)]
    start = time.monotonic()          # a first wave, unharmed, times a wave's life
    for guid, process in [(g, start_cgi(db, query(g))) for g in guids[:CGI_AT_ONCE]]:
        out, _ = process.communicate(timeout=30)
        ledger.record(guid, *cgi_answer(out))
    life = time.monotonic() - start
    for wave in range(CGI_AT_ONCE, CGI_PROCESSES, CGI_AT_ONCE):
        batch = [(g, start_cgi(db, query(g))) for g in guids[wave:wave + CGI_AT_ONCE]]
        start = time.monotonic()
        # Most processes get a moment to die at, spread over a wave's life: before, during
        # or after their transaction.
        plan = sorted((rng.uniform(0.05, 0.8) * life, n) for n in range(len(batch))
                      if rng.random() < 0.8)
        for at, n in plan:
            time.sleep(max(0.0, start + at - time.monotonic()))
            if batch[n][1].poll() is None:
                batch[n][1].kill()
                kills += 1
        for guid, process in batch:
            out, _ = process.communicate(timeout=30)
            ledger.record(guid, *cgi_answer(out))
        assert ledger.check(db) == 0
    assert kills >= CGI_PROCESSES // 8, 'too few processes were killed mid-flight'
    for guid in sorted(ledger.unanswered):                   # the gateway's next retry
        code, body, err = run_cgi(db, query(guid))
        assert (code, body) == (200, DONE), (guid, code, body, err)
        ledger.record(guid, code, body)
    lost = ledger.check(db)
    figures['lost'] += lost
    assert lost == 0
    assert set(deliveries(db)) == set(guids)
    figures['kills'] += kills
    figures['requests'] += ledger.requests
    figures['duplicates'] += ledger.duplicates
    figures['answered_2'] += ledger.answers_of_2
