"""The owner's inbox (inbox.py) called straight, as a WSGI application under WebTest: who may
look, what it shows, and that nothing stored can act on the page. The browser's side is in
test_inbox_browser.py, the shipped set-ups in test_deploy.py."""
import csv
import io
import os
import re
import sqlite3
import time

import pytest

import inbox
import receiver
from conftest import TestApp, write_settings
from test_fiboapi import emulator  # noqa: F401 (a fixture)

PASSWORD = 'correct horse battery'
HOST = 'inbox.example'
ORIGIN = {'Origin': 'https://' + HOST}
HOSTILE = '<script>alert(1)</script>"\'><img src=x onerror=alert(2)>\x1b[2J\u202eevil'


@pytest.fixture
def settings(db):
    """The settings file with the inbox's password (hashed with few iterations: fast)."""
    write_settings(db, 'FIBOSMS_INBOX_PASSWORD=%s' % inbox.hash_password(PASSWORD, 1000))
    return os.path.join(os.path.dirname(db), 'settings.env')


@pytest.fixture
def pushed(make_client, settings, db):
    """push(guid, phone, message, **extra): a message stored through the receiver."""
    client = make_client()

    def push(guid, phone='0912345678', message='hello', **extra):
        params = dict(extra, guid=guid, phone=phone, message=message)
        assert client.get('/', params).body == b'<Status>2</Status>'
    return push


def browser(remote='203.0.113.9', https=True):
    """A client of the inbox as a browser on the internet, over HTTPS."""
    environ = {'REMOTE_ADDR': remote, 'HTTP_HOST': HOST}
    if https:
        environ['wsgi.url_scheme'] = 'https'
    return TestApp(inbox.make_inbox(), extra_environ=environ)


def url(query=''):
    return 'https://%s/%s' % (HOST, query)


def log_in(app, password=PASSWORD):
    """Log in; the list page's CSRF token."""
    res = app.post(url(), {'action': 'login', 'password': password}, headers=ORIGIN)
    assert res.status_int == 303, res
    page = app.get(url())
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text).group(1)


def post(app, csrf, status=200, **form):
    form.setdefault('action', 'search')
    return app.post(url(), dict(form, csrf=csrf), headers=ORIGIN, status=status,
                    expect_errors=True)


def rows_shown(page):
    return re.findall(r'<tr class="\w+"><td><a href="\?id=(\d+)&amp;lang=\w+">', page.text)


# -- Who may look -----------------------------------------------------------------------------

def test_without_a_password_the_inbox_serves_nothing(db, make_client):
    """No FIBOSMS_INBOX_PASSWORD: every request gets 503 and the page saying how to set it."""
    write_settings(db)
    res = browser().get(url(), status=503)
    assert 'inbox-password' in res.text and 'name="password"' not in res.text


def test_plain_http_is_refused_but_from_this_machine(settings):
    """Over plain HTTP only a loopback caller without a proxy's header is served."""
    assert 'HTTPS only' in browser(https=False).get('http://%s/' % HOST, status=403).text
    local = TestApp(inbox.make_inbox(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    assert 'name="password"' in local.get('/').text
    local.get('/', headers={'X-Forwarded-For': '203.0.113.9'}, status=403)


def test_login_sets_a_strict_cookie_and_goes_to_the_page_itself(settings):
    """The session cookie is HttpOnly, Secure, SameSite=Strict and expires; after login the
    browser goes to the page itself, whatever the request names."""
    app = browser()
    res = app.post(url('?next=https://evil.example/'), {'action': 'login',
                                                         'password': PASSWORD,
                                                         'next': '//evil.example'},
                   headers=ORIGIN, status=303)
    assert res.headers['Location'] == '?lang=en'
    cookie = res.headers['Set-Cookie']
    for part in ('HttpOnly', 'Secure', 'SameSite=Strict', 'Max-Age=%d' % inbox.SESSION_SECONDS):
        assert part in cookie, cookie


def test_wrong_passwords_make_the_address_wait_longer_each_time(settings, db):
    """After FREE_FAILURES wrong passwords an address waits 2, then 4 ... seconds; meanwhile
    even the right password is refused unchecked; one log line per lock, no password in it."""
    app = browser()
    for n in range(inbox.FREE_FAILURES):   # (the lock's log line goes to wsgi.errors too)
        res = app.post(url(), {'action': 'login', 'password': 'guess %d' % n}, headers=ORIGIN,
                       status=200, expect_errors=True)
        assert 'name="password"' in res.text and 'fibosms_inbox=' not in res.headers.get(
            'Set-Cookie', '')
    res = app.post(url(), {'action': 'login', 'password': PASSWORD}, headers=ORIGIN)
    assert 'Set-Cookie' not in res.headers and re.search(r'in \d+ seconds', res.text)
    other = browser(remote='203.0.113.10')      # another address is not held up
    assert other.post(url(), {'action': 'login', 'password': PASSWORD},
                      headers=ORIGIN).status_int == 303
    time.sleep(2.1)
    res = app.post(url(), {'action': 'login', 'password': 'guess again'}, headers=ORIGIN,
                   status=200, expect_errors=True)
    waits = [int(w) for w in re.findall(r'it waits (\d+) s', open(os.path.join(
        os.path.dirname(db), 'receiver.log')).read())]
    assert waits == [2, 4]
    log = open(os.path.join(os.path.dirname(db), 'receiver.log')).read()
    assert 'guess' not in log and PASSWORD not in log and '203.0.113.9' in log


@pytest.mark.parametrize('cookie', [
    'fibosms_inbox=forged.%s' % ('0' * 64), 'fibosms_inbox=', 'fibosms_inbox="\\x00;;',
    'fibosms_inbox=a.b.c; fibosms_inbox=d'])
def test_a_forged_cookie_is_not_a_session(settings, cookie):
    """A cookie the page did not sign gets the login page."""
    app = browser()
    res = app.get(url(), headers={'Cookie': cookie})
    assert 'name="password"' in res.text


def test_a_tampered_or_expired_session_is_refused(settings, db):
    """A signed cookie with one character changed, or a session past its end, is none."""
    app = browser()
    log_in(app)
    value = app.cookies['fibosms_inbox']
    app.set_cookie('fibosms_inbox', value[:-1] + ('0' if value[-1] != '0' else '1'))
    assert 'name="password"' in app.get(url()).text
    app.set_cookie('fibosms_inbox', value)
    assert 'name="password"' not in app.get(url()).text
    state = sqlite3.connect(os.path.join(os.path.dirname(db), inbox.STATE_DB))
    state.execute('UPDATE sessions SET expires = ?', (time.time() - 1,))
    state.commit()
    state.close()
    assert 'name="password"' in app.get(url()).text


def test_logout_ends_the_session_on_the_server_too(settings):
    """After logout the old cookie, sent again, is no session."""
    app = browser()
    csrf = log_in(app)
    value = app.cookies['fibosms_inbox']
    res = post(app, csrf, status=303, action='logout')
    assert 'Max-Age=0' in res.headers['Set-Cookie']
    assert 'name="password"' in app.get(url(), headers={'Cookie': 'fibosms_inbox=' + value}).text


@pytest.mark.parametrize('headers', [{}, {'Origin': 'https://evil.example'},
                                     {'Origin': 'null'}, {'Referer': 'https://evil.example/'},
                                     {'Origin': 'http://' + HOST}])
def test_a_post_from_another_origin_is_refused(settings, headers):
    """A POST whose Origin (or Referer) is not the page's own is refused, even logged in and
    with the right CSRF token; and the login too."""
    app = browser()
    csrf = log_in(app)
    app.post(url(), {'action': 'search', 'csrf': csrf}, headers=headers, status=403)
    app.post(url(), {'action': 'login', 'password': PASSWORD}, headers=headers, status=403)


def test_a_post_without_the_csrf_token_is_refused(settings):
    app = browser()
    log_in(app)
    post(app, 'f' * 64, status=403)
    post(app, '', status=403, action='export')
    post(app, '', status=403, action='logout')


def test_every_page_carries_the_security_headers(settings):
    """CSP with default-src 'none' and no script, no framing, nosniff, same-origin referrers,
    no caching; the stylesheet is the page's own."""
    app = browser()
    for res in (app.get(url()), app.get(url('?css'))):
        assert res.headers['Content-Security-Policy'].startswith("default-src 'none';")
        assert "frame-ancestors 'none'" in res.headers['Content-Security-Policy']
        assert 'script' not in res.headers['Content-Security-Policy']
        assert res.headers['X-Content-Type-Options'] == 'nosniff'
        assert res.headers['Referrer-Policy'] == 'same-origin'
        assert res.headers['Cache-Control'] == 'no-store'
        assert res.headers['X-Frame-Options'] == 'DENY'
    assert '<script' not in app.get(url()).text


def test_over_long_requests_are_refused(settings):
    app = browser()
    app.get(url('?' + 'a' * 2000), status=414)
    csrf = log_in(app)
    post(app, csrf, status=413, words='x' * 9000)


# -- What it shows ----------------------------------------------------------------------------

def test_the_list_shows_the_newest_first_fifty_a_page_each_once(pushed, settings):
    """120 messages: pages of 50, 50 and 20, newest first, each message on one page only."""
    for n in range(120):
        pushed('g-%03d' % n, message='text %d' % n)
    app = browser()
    csrf = log_in(app)
    page, seen = app.get(url()), []
    while True:
        ids = rows_shown(page)
        seen.append(len(ids))
        cursor = re.search(r'name="after" value="([^"]+)"', page.text)
        if not cursor:
            break
        page = post(app, csrf, after=cursor.group(1).replace('&#x27;', "'"))
        assert 'text %d' % (119 - sum(seen)) in page.text
    assert seen == [50, 50, 20]


def test_filters_phone_in_any_form_state_words_and_dates(pushed, settings, db):
    """A phone written 0912 345 678 or +84912345678 finds the same messages; words must all
    be in the text; a state; a date range in the page's time zone (UTC+7)."""
    pushed('a', phone='0912345678', message='DK gói cước')
    pushed('b', phone='+84 912 345 678', message='HUY dịch vụ')
    pushed('c', phone='0987654321', message='DK hello')
    conn = sqlite3.connect(db)
    conn.execute("UPDATE messages SET received_at = '2026-11-30T16:59:59.000Z' WHERE guid = 'c'")
    conn.execute("UPDATE messages SET state = 'failed' WHERE guid = 'b'")
    conn.commit()
    conn.close()
    app = browser()
    csrf = log_in(app)

    def guids(**form):
        page = post(app, csrf, **form)
        return sorted(re.findall(r'DK gói cước|HUY dịch vụ|DK hello', page.text))
    assert guids(phone='0912 345 678') == ['DK gói cước', 'HUY dịch vụ']
    assert guids(phone='+84912345678') == ['DK gói cước', 'HUY dịch vụ']
    assert guids(words='dk') == ['DK gói cước', 'DK hello']
    assert guids(words='DK cước') == ['DK gói cước']
    assert guids(words='100%_') == []
    assert guids(state='failed') == ['HUY dịch vụ']
    # 16:59:59 UTC on 30 November is 23:59:59 on the 30th in Vietnam.
    assert guids(**{'from': '2026-11-30', 'to': '2026-11-30'}) == ['DK hello']
    assert guids(**{'from': '2026-12-01'}) == ['DK gói cước', 'HUY dịch vụ']


def test_one_message_in_full(pushed, settings, db):
    """Every column, the extra parameters, the last error."""
    pushed('g-1', message='Xin chào', shortcode='8022')
    conn = sqlite3.connect(db)
    conn.execute("UPDATE messages SET state = 'failed', last_error = 'Traceback: boom'")
    conn.commit()
    ident = conn.execute('SELECT id FROM messages').fetchone()[0]
    conn.close()
    app = browser()
    log_in(app)
    page = app.get(url('?id=%d' % ident))
    for text in ('Xin chào', 'shortcode = 8022', 'Traceback: boom', 'raw_query', '84912345678'):
        assert text in page.text
    app.get(url('?id=999999'), status=404)
    app.get(url('?id=x'), status=400)


def test_health_shows_what_check_reports(pushed, settings, db):
    """The last message, the messages failed or waiting, the database's place and the recent
    reasons of the receiver's log."""
    pushed('g-1')
    conn = sqlite3.connect(db)
    conn.execute("UPDATE messages SET state = 'failed'")
    conn.commit()
    conn.close()
    browser().get(url())    # no log line yet: make one
    receiver_log = os.path.join(os.path.dirname(db), 'receiver.log')
    with open(receiver_log, 'a') as f:
        f.write('2026-12-02T00:00:00Z answered 1 (HTTP 403): wrong or missing token\n')
    app = browser()
    log_in(app)
    text = app.get(url()).text
    assert re.search(r'class="problem">Messages whose hook failed or waits: 1<', text)
    assert "this user&#x27;s own" in text and 'wrong or missing token' in text


def test_a_message_catch_up_stored_is_marked_and_the_health_says_what_it_found(db, emulator):
    """A lost SMS that catch-up stored is marked in the list and on its page; the health has
    catch-up's lines, its finding of a lost SMS a problem, as check reports them."""
    from test_fiboapi import api_settings, run
    write_settings(db, 'FIBOSMS_INBOX_PASSWORD=%s' % inbox.hash_password(PASSWORD, 1000),
                   *api_settings(emulator))
    emulator.receive('0912345678', 'lost one', status=5)
    assert run(db, 'catchup')[0] == 0
    app = browser()
    log_in(app)
    page = app.get(url())
    assert re.search(r'<td>processed, fetched by catch-up</td>', page.text)
    assert re.search(r"class=\"ok\">FiboSMS&#x27;s API \(catchup\): last ran .*1 lost", page.text)
    assert re.search(r'class="problem">FiboSMS&#x27;s API \(catchup_lost\): the push lost 1 SMS',
                     page.text)
    [ident] = rows_shown(page)
    assert 'stored by catch-up' in app.get(url('?id=%s' % ident)).text


def test_vietnamese_for_a_vietnamese_browser_and_a_switch(settings):
    app = browser()
    assert 'Mật khẩu' in app.get(url(), headers={'Accept-Language': 'vi-VN,vi;q=0.9'}).text
    assert 'Password' in app.get(url(), headers={'Accept-Language': 'en-US'}).text
    page = app.get(url('?lang=vi'), headers={'Accept-Language': 'en-US'})
    assert 'Mật khẩu' in page.text and 'href="?lang=en"' in page.text


def test_a_text_search_stops_at_its_budget_and_says_so(pushed, settings, db, monkeypatch):
    """A text search over many rows stops after SEARCH_BUDGET and the page says it stopped."""
    pushed('g-0')
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO messages (guid, phone, phone_normalised, message, charset, raw_query,"
        " received_at, last_delivery_at, state) VALUES (?, '1', '1', 'x', 'utf-8', '', ?, ?,"
        " 'processed')", [('bulk-%d' % n, '2026-01-01T00:00:00.000Z',
                           '2026-01-01T00:00:00.000Z') for n in range(200000)])
    conn.commit()
    conn.close()
    monkeypatch.setattr(inbox, 'SEARCH_BUDGET', 0.01)
    app = browser()
    csrf = log_in(app)
    page = post(app, csrf, words='nowhere')
    assert 'The search stopped after 0.01 s' in page.text


# -- Nothing stored acts ----------------------------------------------------------------------

def test_hostile_values_are_text_everywhere(pushed, settings):
    """Markup, quotes, escape codes and a right-to-left override in the phone, the text, the
    guid and an extra parameter are shown as text (escaped, controls as \\x1b), never as markup."""
    pushed('g<b>' + HOSTILE[:40], phone='"><b>091', message=HOSTILE, note=HOSTILE)
    app = browser()
    csrf = log_in(app)
    pages = [app.get(url()), post(app, csrf, words='alert')]
    ident = rows_shown(pages[0])[0]
    pages.append(app.get(url('?id=' + ident)))
    for page in pages:
        assert '<script>' not in page.text and '<img' not in page.text and '<b>' not in page.text
        assert '\x1b' not in page.text and '\u202e' not in page.text
        assert '&lt;script&gt;alert(1)&lt;/script&gt;' in page.text
        assert '\\x1b[2J\\u202eevil' in page.text


def test_the_csv_opens_right_in_a_spreadsheet(pushed, settings):
    """UTF-8 with a BOM; a phone kept as text with its leading 0 (="0912..."); a field that
    starts like a formula gets a ' in front; only the filtered rows."""
    pushed('g-1', phone='0912345678', message='=HYPERLINK("http://evil.example","x")')
    pushed('g-2', phone='0987654321', message='Xin chào')
    app = browser()
    csrf = log_in(app)
    res = post(app, csrf, action='export', phone='0912345678')
    assert res.headers['Content-Type'] == 'text/csv; charset=utf-8'
    assert res.headers['Content-Disposition'].startswith('attachment; filename="fibosms-')
    assert res.body.startswith(b'\xef\xbb\xbf')
    table = list(csv.DictReader(io.StringIO(res.body.decode('utf-8-sig'))))
    assert len(table) == 1
    assert table[0]['phone'] == '="0912345678"'
    assert table[0]['phone_normalised'] == '="84912345678"'
    assert table[0]['message'] == '\'=HYPERLINK("http://evil.example","x")'


def test_a_quote_in_a_phone_cannot_leave_excels_text_formula():
    assert inbox.excel_text('09"&cmd|x"') == '="09""&cmd|x"""'


def test_no_phone_text_or_search_word_reaches_a_url_or_a_log(pushed, settings, db):
    """Filters travel by POST: no link or form action of a page holds a phone, a text or a
    search word; and the receiver's log holds none of them after a search and an export."""
    pushed('g-1', phone='0912345678', message='secret-word-%s' % 'q1')
    app = browser()
    csrf = log_in(app)
    for page in (post(app, csrf, phone='0912345678', words='secret-word'),
                 app.get(url())):
        for target in re.findall(r'(?:href|action)="([^"]*)"', page.text):
            assert '0912' not in target and 'secret-word' not in target, target
    post(app, csrf, action='export', words='secret-word')
    log = os.path.join(os.path.dirname(db), 'receiver.log')
    text = open(log).read() if os.path.exists(log) else ''
    assert '0912' not in text and 'secret-word' not in text


def test_the_inbox_changes_no_message(pushed, settings, db):
    """Reading, searching and exporting leave the database byte for byte as it was."""
    pushed('g-1')
    with open(db, 'rb') as f:
        before = f.read()
    app = browser()
    csrf = log_in(app)
    post(app, csrf, words='hello')
    post(app, csrf, action='export')
    with open(db, 'rb') as f:
        assert f.read() == before


def test_set_password_writes_a_hash_into_the_settings_file(tmp_path):
    """set_password keeps the other lines, replaces an old password line, writes 0600; the
    hash is PBKDF2-SHA256 with OWASP's iterations and a salt of its own each time."""
    config = tmp_path / 'fibosms-data' / 'settings.env'
    config.parent.mkdir(mode=0o700)
    config.write_text('FIBOSMS_TOKEN=a-long-enough-secret\nFIBOSMS_INBOX_PASSWORD=old\n')
    inbox.set_password(str(config), PASSWORD)
    first = config.read_text()
    inbox.set_password(str(config), PASSWORD)
    lines = config.read_text().splitlines()
    assert lines[0] == 'FIBOSMS_TOKEN=a-long-enough-secret' and len(lines) == 2
    assert lines[1].startswith('FIBOSMS_INBOX_PASSWORD=pbkdf2_sha256$600000$')
    assert lines[1] != first.splitlines()[1]
    assert oct(os.stat(str(config)).st_mode & 0o777) == '0o600'
    stored = receiver.read_settings_file(str(config), True)[0]['FIBOSMS_INBOX_PASSWORD']
    assert inbox.password_matches(PASSWORD, stored)
    assert not inbox.password_matches(PASSWORD + 'x', stored)
    assert not inbox.password_matches(PASSWORD, PASSWORD)      # a password in clear: no hash


def test_inbox_password_command_asks_twice_and_sets_the_hash(tmp_path, db):
    """`storage.py inbox-password`, with no flag, writes the hash into the default settings
    file; two different answers, or a short password, change nothing."""
    import subprocess
    import sys
    from conftest import ROOT
    from support import clean_env

    def run(answers):
        return subprocess.run([sys.executable, os.path.join(ROOT, 'storage.py'),
                               'inbox-password'], input=answers.encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=clean_env(HOME=str(tmp_path)),
                              start_new_session=True, timeout=60)    # no terminal: stdin
    config = tmp_path / 'fibosms-data' / 'settings.env'
    assert run('short\nshort\n').returncode == 2 and not config.exists()
    assert run(PASSWORD + '\nother one here\n').returncode == 2 and not config.exists()
    done = run(PASSWORD + '\n' + PASSWORD + '\n')
    assert done.returncode == 0, done.stderr
    assert PASSWORD.encode() not in done.stdout + done.stderr
    stored = receiver.read_settings_file(str(config), True)[0]['FIBOSMS_INBOX_PASSWORD']
    assert inbox.password_matches(PASSWORD, stored)


def test_a_password_written_in_clear_is_hashed_when_the_page_is_opened(db):
    """An owner without a shell writes the password itself in settings.env: the page's next
    request replaces it with its hash (one log line), and it logs in; one too short is none."""
    write_settings(db, 'FIBOSMS_TOKEN=a-long-enough-secret', 'FIBOSMS_INBOX_PASSWORD=short')
    config = os.path.join(os.path.dirname(db), 'settings.env')
    assert 'inbox-password' in browser().get(url(), status=503).text
    write_settings(db, 'FIBOSMS_TOKEN=a-long-enough-secret',
                   'FIBOSMS_INBOX_PASSWORD=' + PASSWORD)
    app = browser()
    res = app.get(url(), expect_errors=True, status=200)     # the log line: wsgi.errors
    assert 'name="password"' in res.text
    text = open(config).read()
    assert PASSWORD not in text and 'FIBOSMS_INBOX_PASSWORD=pbkdf2_sha256$' in text
    assert 'FIBOSMS_TOKEN=a-long-enough-secret' in text
    log_in(app)


# -- What a hostile review tried --------------------------------------------------------------

def test_guesses_sent_at_once_are_each_counted(settings, db):
    """Twenty wrong passwords sent at the same moment from one address are each counted
    before any is checked: the address is locked, not left at one failure."""
    import threading
    app = inbox.make_inbox()
    results = []

    def guess(n):
        try:
            res = TestApp(app, extra_environ={'REMOTE_ADDR': '203.0.113.9', 'HTTP_HOST': HOST,
                                              'wsgi.url_scheme': 'https'}).post(
                url(), {'action': 'login', 'password': 'guess %d' % n}, headers=ORIGIN,
                status=200, expect_errors=True)
            results.append(res.text)
        except Exception as exc:    # kept, to be seen in the assertion below
            results.append(repr(exc))
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(20)]
    start = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    state = sqlite3.connect(os.path.join(os.path.dirname(db), inbox.STATE_DB))
    count, until = state.execute("SELECT count, until FROM failures WHERE address ="
                                 " '203.0.113.9'").fetchone()
    state.close()
    checked = sum('Wrong password' in text for text in results)
    locked = sum('Too many wrong passwords' in text for text in results)
    assert (checked + locked, len(results)) == (20, 20), results
    assert count == checked == inbox.FREE_FAILURES and until > start + 1


def test_one_ipv6_network_is_one_guesser_and_the_page_has_a_budget(settings, monkeypatch):
    """Addresses of one /64 share their count; past MAX_TRIES_A_MINUTE tries from anywhere,
    the page checks no password for the rest of the minute."""
    for n in range(inbox.FREE_FAILURES):
        browser(remote='2001:db8::%x' % (n + 1)).post(
            url(), {'action': 'login', 'password': 'guess'}, headers=ORIGIN, status=200,
            expect_errors=True)
    res = browser(remote='2001:db8::ffff').post(url(), {'action': 'login', 'password': PASSWORD},
                                               headers=ORIGIN)
    assert 'Too many wrong passwords' in res.text
    monkeypatch.setattr(inbox, 'MAX_TRIES_A_MINUTE', inbox.FREE_FAILURES + 3)
    for n in range(3):
        browser(remote='198.51.100.%d' % n).post(url(), {'action': 'login', 'password': 'x'},
                                                 headers=ORIGIN)
    res = browser(remote='198.51.100.99').post(url(), {'action': 'login', 'password': PASSWORD},
                                              headers=ORIGIN)
    assert 'Too many wrong passwords' in res.text and 'Set-Cookie' not in res.headers


@pytest.mark.parametrize('headers', [
    {'Origin': 'https://\xe9'}, {'Cookie': 'fibosms_inbox="\\351.abc"'},
    {'Cookie': 'fibosms_inbox="abc.\\351"'}])
def test_non_ascii_origins_and_cookies_are_refused_quietly(settings, db, headers):
    """An Origin or a cookie with non-ASCII bytes is a refusal (or no session), not a 500,
    and writes nothing in the owner's log."""
    res = browser().post(url(), {'action': 'search', 'csrf': '\xe9' * 64}, headers=headers,
                         status=403, expect_errors=True)
    assert 'failed' not in res.text
    assert not os.path.exists(os.path.join(os.path.dirname(db), 'receiver.log'))


def test_a_non_ascii_csrf_token_is_a_refusal(settings):
    app = browser()
    log_in(app)
    post(app, '\xe9' * 64, status=403)


def test_plain_http_for_another_host_name_is_refused(settings):
    """On the loopback command a rebinding DNS name pointed at 127.0.0.1 is not served."""
    local = TestApp(inbox.make_inbox(), extra_environ={'REMOTE_ADDR': '127.0.0.1'})
    local.get('http://evil.example:8001/', status=403)
    assert 'name="password"' in local.get('http://127.0.0.1:8001/').text
    assert 'name="password"' in local.get('http://localhost:8001/').text


def test_first_requests_at_once_hash_a_clear_password_once(db):
    """Ten first requests at once: every one is served, the settings file is never seen
    without its other lines, and the password ends hashed."""
    import threading
    write_settings(db, 'FIBOSMS_TOKEN=a-long-enough-secret', 'FIBOSMS_INBOX_PASSWORD=' + PASSWORD)
    config = os.path.join(os.path.dirname(db), 'settings.env')
    app, statuses, seen, done = inbox.make_inbox(), [], [], threading.Event()

    def read():
        while not done.is_set():
            seen.append('FIBOSMS_TOKEN=a-long-enough-secret' in open(config).read())

    def first():
        statuses.append(TestApp(app, extra_environ={
            'REMOTE_ADDR': '203.0.113.9', 'HTTP_HOST': HOST, 'wsgi.url_scheme': 'https'}).get(
            url(), expect_errors=True).status_int)
    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=first) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    reader.join(10)
    assert statuses == [200] * 10 and seen and all(seen)
    assert open(config).read().count('pbkdf2_sha256$') == 1


def test_a_negative_content_length_is_refused(settings):
    """(The small server passes a Content-Length of -1 on; WebTest's lint would refuse it.)"""
    app = TestApp(inbox.make_inbox(), lint=False, extra_environ={
        'REMOTE_ADDR': '203.0.113.9', 'HTTP_HOST': HOST, 'wsgi.url_scheme': 'https'})
    app.post(url(), b'x' * 100, headers=dict(ORIGIN, **{'Content-Length': '-1'}), status=413,
             expect_errors=True)


def test_a_newline_in_the_path_never_reaches_the_cookie(settings):
    res = browser().post(url('x%0A'), {'action': 'login', 'password': PASSWORD}, headers=ORIGIN,
                         extra_environ={'PATH_INFO': '/x\n'}, status=303)
    assert '\n' not in res.headers['Set-Cookie'] and 'Path=/;' in res.headers['Set-Cookie']


def test_invisible_characters_and_newlines_in_extras_are_shown(pushed, settings):
    """A zero-width space in a phone is shown as \\u200b; a newline in an extra parameter
    cannot fake another line of the message's page."""
    pushed('g-1', phone='0912\u200b345678', z='a\nlast_error = FAKE')
    app = browser()
    log_in(app)
    ident = rows_shown(app.get(url()))[0]
    page = app.get(url('?id=' + ident))
    assert '0912\\u200b345678' in page.text and '\u200b' not in page.text
    assert 'z = a\\nlast_error = FAKE' in page.text


def test_https_pages_ask_for_https_next_time(settings):
    assert browser().get(url()).headers['Strict-Transport-Security'] == 'max-age=31536000'


def test_an_id_too_long_for_sqlite_is_a_bad_request(settings):
    app = browser()
    log_in(app)
    app.get(url('?id=99999999999999999999'), status=400)


def test_a_filter_without_words_stops_at_the_budget_too(pushed, settings, db, monkeypatch):
    """state=processed on many rows of which none is: the scan stops at the budget."""
    pushed('g-0')
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO messages (guid, phone, phone_normalised, message, charset, raw_query,"
        " received_at, last_delivery_at, state) VALUES (?, '1', '1', 'x', 'utf-8', '', ?, ?,"
        " 'failed')", [('bulk-%d' % n, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')
                       for n in range(200000)])
    conn.execute("UPDATE messages SET state = 'failed'")
    conn.commit()
    conn.close()
    monkeypatch.setattr(inbox, 'SEARCH_BUDGET', 0.01)
    app = browser()
    csrf = log_in(app)
    assert 'The search stopped after 0.01 s' in post(app, csrf, state='processed').text


def test_a_new_password_ends_the_sessions_open(settings):
    app = browser()
    log_in(app)
    inbox.set_password(settings, PASSWORD + ' new')
    assert 'name="password"' in app.get(url()).text
