"""The owner's inbox in a real browser (Debian's chromium, headless), on each shipped way to
serve it: the CGI folder (deploy/cgi-inbox/), mod_wsgi's lines, Passenger's /inbox and the
loopback command on the small box. An owner logs in, lists, filters, opens a message,
downloads the CSV and logs out; an attacker stores markup, posts from another site, frames
the page, guesses the password and forges the cookie."""
import csv
import glob
import http.server
import io
import os
import socketserver
import threading
import time

import pytest

import inbox
import support
from support import DONE, PHONE, VIETNAMESE

PASSWORD = 'correct horse battery'
WAYS = ['cgi', 'mod_wsgi', 'passenger', 'small_server']
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">\u202eevil'


@pytest.fixture(scope='module')
def sites():
    """sites(way) -> that set-up, started once, its inbox's password set; `inbox_url`."""
    started = {}

    def get(way):
        if way not in started:
            site = support.start(way)
            site.ws.settings('FIBOSMS_INBOX_PASSWORD=%s' % inbox.hash_password(PASSWORD, 1000))
            if way == 'small_server':
                command = support.InboxCommand(site.ws).start()
                site.servers.append(command)
                site.inbox_url = 'http://127.0.0.1:%d/' % command.port
            started[way] = site
        return started[way]
    try:
        yield get
    finally:
        for site in started.values():
            site.stop()


@pytest.fixture
def chrome(tmp_path):
    downloads = str(tmp_path / 'downloads')
    os.mkdir(downloads)
    driver = support.browser(downloads)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def click(driver, selector):
    """Click the element and wait until the page it loads has replaced this one."""
    old = driver.find_element('tag name', 'html')
    driver.find_element('css selector', selector).click()

    def replaced():
        try:
            old.tag_name
        except Exception:   # selenium's StaleElementReferenceException: the page is new
            return True
        return False
    wait_for(replaced)


def log_in(driver, site, password=PASSWORD):
    driver.get(site.inbox_url)
    driver.find_element('name', 'password').send_keys(password)
    click(driver, 'main form button')


def text(driver):
    return driver.find_element('tag name', 'body').text


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError('not within %g s' % seconds)


@pytest.mark.parametrize('way', WAYS)
def test_owner_lists_filters_opens_downloads_and_logs_out(sites, chrome, way):
    site = sites(way)
    first = support.new_guid()
    assert site.push(message=VIETNAMESE, guid=first)[1].body == DONE
    assert site.push(message='DK goi cuoc', phone='0987654321')[1].body == DONE
    log_in(chrome, site)
    page = text(chrome)
    assert 'Messages' in page and 'DK goi cuoc' in page and VIETNAMESE in page
    assert 'Last message received' in page
    # Filter by the phone as a customer writes it.
    box = chrome.find_element('name', 'phone')
    box.send_keys('0912 345 678')
    click(chrome, 'button[value="search"]')
    page = text(chrome)
    assert VIETNAMESE in page and 'DK goi cuoc' not in page
    assert PHONE[1:] not in chrome.current_url and '0912' not in chrome.current_url
    # One message in full.
    click(chrome, 'td a')
    assert first in text(chrome) and 'raw_query' in text(chrome)
    chrome.back()
    # The CSV of the filtered rows, read back.
    chrome.get(site.inbox_url)
    chrome.find_element('name', 'words').send_keys('goi cuoc')
    chrome.find_element('css selector', 'button[value="export"]').click()
    path = wait_for(lambda: [p for p in glob.glob(os.path.join(chrome.downloads, '*.csv'))])[0]
    with open(path, 'rb') as f:
        data = f.read()
    assert data.startswith(b'\xef\xbb\xbf')
    table = list(csv.DictReader(io.StringIO(data.decode('utf-8-sig'))))
    assert [(r['phone'], r['message']) for r in table] == [('="0987654321"', 'DK goi cuoc')]
    # Log out: the page asks for the password again, and the old session is gone.
    chrome.get(site.inbox_url)
    click(chrome, 'header button')
    assert chrome.find_elements('name', 'password')
    chrome.get(site.inbox_url)
    assert chrome.find_elements('name', 'password')


@pytest.mark.parametrize('way', ['mod_wsgi', 'cgi'])
def test_stored_markup_never_runs(sites, chrome, way):
    """Markup in a text, a phone and an extra parameter is shown as text: no script runs, no
    element is made of it, the override character is shown as \\u202e."""
    site = sites(way)
    guid = support.new_guid()
    url = '%s?%s&note=%s' % (site.url, support.push_query(HOSTILE, '<b>0912</b>', guid),
                             support.urllib.parse.quote(HOSTILE))
    assert support.get(url, site.cafile).body == DONE
    log_in(chrome, site)
    for where in ('list', 'message'):
        if where == 'message':
            click(chrome, 'td a')
        assert chrome.execute_script('return window.pwned') is None
        assert chrome.find_elements('tag name', 'img') == []
        assert chrome.find_elements('tag name', 'script') == []
        assert chrome.find_elements('tag name', 'b') == []
        assert '<script>window.pwned=1</script>' in text(chrome)
        assert '\\u202eevil' in text(chrome) and '\u202e' not in text(chrome)


class Attacker:
    """Another site, on another port of 127.0.0.1, serving one page of ours."""

    def __init__(self, page):
        body = page.encode('utf-8')

        class Serve(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header('Content-Type', 'text/html; charset=utf-8')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        # Threads: a browser opens a spare connection it may never send on.
        self.server = socketserver.ThreadingTCPServer(('127.0.0.1', 0), Serve)
        self.server.daemon_threads = True
        self.url = 'http://127.0.0.1:%d/' % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize('action', ['search', 'export', 'logout'])
def test_a_form_on_another_site_cannot_act_or_read(sites, chrome, action):
    """Logged in, the owner visits a page that posts a form to the inbox at once: the inbox
    refuses it (the cookie is SameSite=Strict, the Origin another), shows no message, and the
    owner is still logged in."""
    site = sites('mod_wsgi')
    assert site.push(message='only for the owner')[1].body == DONE
    log_in(chrome, site)
    assert 'only for the owner' in text(chrome)
    attacker = Attacker(
        '<form method="post" action="%s"><input name="action" value="%s">'
        '<input name="words" value="owner"></form><script>document.forms[0].submit()'
        '</script>' % (site.inbox_url, action))
    try:
        chrome.get(attacker.url)
        wait_for(lambda: chrome.current_url.startswith(site.inbox_url))
        assert 'only for the owner' not in text(chrome)
        assert not glob.glob(os.path.join(chrome.downloads, '*'))
    finally:
        attacker.stop()
    chrome.get(site.inbox_url)
    assert 'only for the owner' in text(chrome)      # the logout did not happen


def test_the_inbox_cannot_be_framed(sites, chrome):
    site = sites('mod_wsgi')
    log_in(chrome, site)
    attacker = Attacker('<iframe src="%s" width="400" height="400"></iframe>' % site.inbox_url)
    try:
        chrome.get(attacker.url)
        time.sleep(1)
        chrome.switch_to.frame(chrome.find_element('tag name', 'iframe'))
        assert 'Messages' not in text(chrome) and not chrome.find_elements('name', 'words')
    finally:
        chrome.switch_to.default_content()
        attacker.stop()


def test_guessing_the_password_is_slowed(sites, chrome):
    site = sites('mod_wsgi')
    for n in range(inbox.FREE_FAILURES):
        log_in(chrome, site, 'guess %d' % n)
        assert 'Wrong password' in text(chrome) or 'Too many' in text(chrome)
    log_in(chrome, site)        # the right one, too early
    assert 'Too many wrong passwords' in text(chrome)
    assert chrome.find_elements('name', 'password')
    lines = site.ws.receiver_log()
    assert 'wrong passwords from 127.0.0.1' in lines and 'guess' not in lines
    time.sleep(2.5)
    log_in(chrome, site)
    assert chrome.find_elements('name', 'words')


@pytest.mark.parametrize('change', ['tampered', 'expired'])
def test_a_tampered_or_expired_cookie_is_no_session(sites, chrome, change):
    site = sites('mod_wsgi')
    log_in(chrome, site)
    assert chrome.find_elements('name', 'words')
    cookie = chrome.get_cookie(inbox.COOKIE)
    assert cookie['httpOnly'] and cookie['secure'] and cookie['sameSite'] == 'Strict'
    if change == 'tampered':
        value = cookie['value']
        chrome.delete_cookie(inbox.COOKIE)
        chrome.add_cookie({'name': inbox.COOKIE, 'value': value[:-1] + (
            'a' if value[-1] != 'a' else 'b'), 'path': cookie['path'], 'secure': True})
    else:
        import sqlite3
        state = sqlite3.connect(os.path.join(site.ws.data, inbox.STATE_DB))
        state.execute('UPDATE sessions SET expires = 0')
        state.commit()
        state.close()
    chrome.get(site.inbox_url)
    assert chrome.find_elements('name', 'password') and not chrome.find_elements('name', 'words')


def test_an_over_long_request_gets_a_short_answer(sites, chrome):
    site = sites('mod_wsgi')
    chrome.get(site.inbox_url + '?' + 'a' * 3000)
    assert 'too long' in text(chrome)
