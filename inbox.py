"""The owner's inbox: the stored messages and the receiver's health, in a browser.

Optional, and loaded only by its own page (deploy/cgi-inbox/inbox.cgi, the mod_wsgi and
Passenger lines, or ``python3 storage.py inbox`` on 127.0.0.1): no push ever loads it. It changes no
message: it reads the database read-only. Standard library only.

Who may look, and how it keeps everyone else out (the rules, all of them here):
- A password of its own, FIBOSMS_INBOX_PASSWORD in the settings file, kept as a PBKDF2-SHA256
  hash: ``python3 storage.py inbox-password`` sets it; an owner without a shell writes the
  password itself on that line, and the page replaces it with its hash when it is next
  opened. None set (or one under MIN_PASSWORD characters), the page serves nothing.
- HTTPS only; plain HTTP from this machine alone (a loopback address, no proxy header).
- The password compared in constant time; after FREE_FAILURES wrong ones from an address, that
  address waits 2, 4, 8 ... seconds (at most MAX_LOCK) before it may try again, each lock one
  line in the receiver's log.
- A session: a random id in a cookie, signed with the page's own key (inbox.sqlite3 in the
  data folder), HttpOnly, Secure, SameSite=Strict, ending after SESSION_SECONDS or at logout
  (the server forgets it). Login goes to the page itself, never to a URL the request names.
- Every POST carries the session's CSRF token (login aside) and an Origin (or Referer) of
  this page's own; a GET changes nothing.
- Every stored value is escaped where it goes (HTML text and attributes; a CSV field made
  safe for a spreadsheet), its control and bidirectional characters shown as \\x1b, \\u202e.
- Content-Security-Policy default-src 'none' (one stylesheet of its own, no script at all),
  framing refused, nosniff, Referrer-Policy same-origin, Cache-Control no-store.
- No phone, text or search word in a URL: filters go by POST; a URL carries a message's id,
  a page's cursor (a time and an id) and the language. Nothing of a message is logged.
"""
import base64
import calendar
import csv
import hashlib
import hmac
import html
import io
import json
import os
import re
import secrets
import sqlite3
import time
import urllib.parse
from http.cookies import SimpleCookie

import fiboapi
import ownerlog
import receiver
import storage

PAGE_SIZE = 50
SESSION_SECONDS = 8 * 3600
FREE_FAILURES = 5               # wrong passwords from one address before it must wait
MAX_LOCK = 900                  # seconds an address waits at most between two tries
MAX_TRIES_A_MINUTE = 20         # password checks of the whole page: each costs ~0.2 s of CPU
ALL = '*'                       # the failures row that counts every address's tries
PBKDF2_ITERATIONS = 600000      # OWASP's figure for PBKDF2-HMAC-SHA256 (2023)
HASHED = 'pbkdf2_sha256$'       # how a hashed FIBOSMS_INBOX_PASSWORD starts
MIN_PASSWORD = 10               # characters: the page is on the internet
MAX_QUERY, MAX_BODY = 1024, 8192    # bytes of a request's query string and body
SEARCH_BUDGET = 0.25            # seconds a text search may scan before the page says it stopped
MAX_WORDS, MAX_WORD = 5, 64     # words of a text search, characters of each
DEFAULT_TIMEZONE = '+07:00'     # Vietnam; FIBOSMS_INBOX_TIMEZONE sets another
STATE_DB = 'inbox.sqlite3'      # beside the settings file: the key, sessions, failed logins
COOKIE = 'fibosms_inbox'
HEADERS = [
    ('Content-Security-Policy', "default-src 'none'; style-src 'self'; form-action 'self';"
                                " frame-ancestors 'none'; base-uri 'none'"),
    ('X-Frame-Options', 'DENY'), ('X-Content-Type-Options', 'nosniff'),
    ('Referrer-Policy', 'same-origin'), ('Cache-Control', 'no-store')]
STATE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS failures (address TEXT PRIMARY KEY, count INTEGER NOT NULL,"
    " until REAL NOT NULL)")
LIST_COLUMNS = ('id, guid, phone, message, state, deliveries, received_at, claimed_until,'
                ' (%s) AS fetched' % fiboapi.FETCHED_SQL)   # stored by catch-up, not pushed
STATES = {'failed': "state = 'failed'", 'waiting': "state = 'processing'",
          'processed': "+state = 'processed'"}     # +: by time, not by the state's index
CSV_COLUMNS = ('received_at', 'phone', 'phone_normalised', 'message', 'state', 'deliveries',
               'guid', 'last_delivery_at', 'extra')


class Answer(Exception):
    """An answer other than the page asked for: `status`, a page's `body`, `headers`."""

    def __init__(self, status, body, headers=()):
        Exception.__init__(self, status)
        self.status, self.body, self.headers = status, body, list(headers)


def make_inbox(config=None):
    """The inbox's WSGI application; `config` names the settings file (as for make_app)."""
    given = {} if config is None else {'FIBOSMS_CONFIG': config}

    def application(environ, start_response):
        request = Request(environ, given)
        try:
            status, body, headers = request.route()
        except Answer as answer:
            status, body, headers = answer.status, answer.body, answer.headers
        except receiver.Reject as exc:      # a setting that cannot work: the owner's to mend
            ownerlog.log(environ, receiver.config_path(environ, given)[0],
                         'inbox: %s' % exc.reason)
            request.session = None
            status, body, headers = '500 Internal Server Error', request.page(
                request.t('broken'), ''), []
        except Exception as exc:    # the database, or a bug: the server's log only, so that
            environ['wsgi.errors'].write(     # no caller can fill receiver.log with them
                'fibosms-inbox: unexpected error %s\n' % type(exc).__name__)
            request.session = None
            status, body, headers = '500 Internal Server Error', request.page(
                request.t('broken'), ''), []
        if isinstance(body, str):
            body = [body.encode('utf-8')]
            headers = [('Content-Type', 'text/html; charset=utf-8')] + headers
        if environ.get('wsgi.url_scheme') == 'https':
            headers.append(('Strict-Transport-Security', 'max-age=31536000'))
        start_response(status, HEADERS + headers)
        return body

    return application


# -- The request ------------------------------------------------------------------------------

class Request:
    """One request to the inbox: its settings, language, form, session."""

    def __init__(self, environ, given):
        self.environ, self.given = environ, given
        # The page's own path, for its cookie: the page has one URL (links are relative to it).
        path = (environ.get('SCRIPT_NAME', '') + environ.get('PATH_INFO', '')).rstrip('/')
        self.path = path if re.match(r'^[A-Za-z0-9/._~-]{1,200}\Z', path) else '/'
        self.query = dict(urllib.parse.parse_qsl(environ.get('QUERY_STRING', '')[:MAX_QUERY]))
        self.form, self.session, self.lang = {}, None, 'en'

    def route(self):
        environ = self.environ
        self.lang = choose_language(self.query.get('lang'), environ.get('HTTP_ACCEPT_LANGUAGE'))
        if len(environ.get('QUERY_STRING', '')) > MAX_QUERY:
            raise Answer('414 URI Too Long', self.page(self.t('too_long'), ''))
        if 'css' in self.query:
            return '200 OK', [STYLE.encode('utf-8')], [('Content-Type', 'text/css')]
        if not secure(environ):
            raise Answer('403 Forbidden', self.page(self.t('https_only'), ''))
        self.settings = receiver.read_settings(environ, self.given)
        self.config = self.settings['FIBOSMS_CONFIG']
        stored = self.settings.get('FIBOSMS_INBOX_PASSWORD') or ''
        if (not stored.startswith(HASHED) and len(stored) >= MIN_PASSWORD
                and os.access(os.path.dirname(self.config), os.W_OK)):
            # Written in clear by hand: hashed now (once, whoever's request comes first).
            set_password(self.config, stored, only_if_clear=True)
            ownerlog.log(environ, self.config, 'inbox: FIBOSMS_INBOX_PASSWORD is now kept'
                                               ' hashed in %s' % self.config)
            self.settings = receiver.read_settings(environ, self.given)
            stored = self.settings.get('FIBOSMS_INBOX_PASSWORD') or ''
        if not stored.startswith(HASHED):
            raise Answer('503 Service Unavailable', self.page(self.t('no_password'), ''))
        self.state = open_state(os.path.join(os.path.dirname(self.config), STATE_DB))
        try:
            method = environ.get('REQUEST_METHOD', 'GET')
            if method == 'POST':
                self.read_form()
                if self.form.get('lang') in TEXTS:
                    self.lang = self.form['lang']
                if not same_origin(environ):
                    raise Answer('403 Forbidden', self.page(self.t('forbidden'), ''))
            elif method not in ('GET', 'HEAD'):
                raise Answer('405 Method Not Allowed', self.page(self.t('forbidden'), ''),
                             [('Allow', 'GET, POST')])
            action = self.form.get('action') if method == 'POST' else None
            if action == 'login':
                return self.login()
            self.session = find_session(self.state, environ.get('HTTP_COOKIE', ''))
            if self.session is None:
                if method == 'POST':
                    raise Answer('403 Forbidden', self.login_page(self.t('expired')))
                return '200 OK', self.login_page(), []
            csrf = self.form.get('csrf', '')
            if method == 'POST' and not (re.match(r'^[0-9a-f]{64}\Z', csrf) and
                                         hmac.compare_digest(csrf, csrf_token(self.state,
                                                                              self.session))):
                raise Answer('403 Forbidden', self.page(self.t('forbidden'), ''))
            if action == 'logout':
                return self.logout()
            if action == 'export':
                return self.export()
            if method == 'GET' and 'id' in self.query:
                return '200 OK', self.message_page(), []
            return '200 OK', self.list_page(), []
        finally:
            self.state.close()

    def read_form(self):
        try:
            size = int(self.environ.get('CONTENT_LENGTH') or 0)
        except ValueError:
            size = MAX_BODY + 1
        if not 0 <= size <= MAX_BODY:
            raise Answer('413 Payload Too Large', self.page(self.t('too_long'), ''))
        body = self.environ['wsgi.input'].read(size) if size else b''
        self.form = dict(urllib.parse.parse_qsl(body.decode('utf-8', 'replace')))

    def t(self, key, *args):
        text = TEXTS[self.lang][key]
        return text % args if args else text

    # -- Logging in and out ----------------------------------------------------------------

    def login(self):
        """Each try is counted (and locks its address past FREE_FAILURES, the whole page past
        MAX_TRIES_A_MINUTE) before the password is hashed, in one transaction: tries sent at
        once are counted each, and a locked address costs no hash."""
        address = caller_key(self.environ.get('REMOTE_ADDR', ''))
        with storage.Transaction(self.state):
            now = time.time()   # read once the lock is held: an earlier clock sees no lock
            self.state.execute('DELETE FROM failures WHERE until < ? AND address != ?',
                               (now - 86400, ALL))
            row = self.state.execute('SELECT count, until FROM failures WHERE address = ?',
                                     (address,)).fetchone()
            tries = self.state.execute('SELECT count, until FROM failures WHERE address = ?',
                                       (ALL,)).fetchone()
            if tries is None or tries[1] <= now:
                tries = (0, now + 60)
            if (row and row[1] > now) or tries[0] >= MAX_TRIES_A_MINUTE:
                wait = max(row[1] if row and row[1] > now else 0, tries[1]
                           if tries[0] >= MAX_TRIES_A_MINUTE else 0) - now
                return '200 OK', self.login_page(self.t('locked', int(wait) + 1)), []
            count = (row[0] if row else 0) + 1
            wait = 0 if count < FREE_FAILURES else min(2 ** (count - FREE_FAILURES + 1),
                                                       MAX_LOCK)
            self.state.execute('INSERT OR REPLACE INTO failures VALUES (?, ?, ?)',
                               (address, count, now + wait))
            self.state.execute('INSERT OR REPLACE INTO failures VALUES (?, ?, ?)',
                               (ALL, tries[0] + 1, tries[1]))
        if not password_matches(self.form.get('password', ''),
                                self.settings['FIBOSMS_INBOX_PASSWORD']):
            if wait:
                ownerlog.log(self.environ, self.config, 'inbox: %d wrong passwords from %s:'
                             ' it waits %d s before the next try' % (count, address[:60], wait))
            return '200 OK', self.login_page(self.t('wrong')), []
        self.state.execute('DELETE FROM failures WHERE address = ?', (address,))
        self.state.execute('DELETE FROM sessions WHERE expires < ?', (now,))
        session = secrets.token_urlsafe(32)
        self.state.execute('INSERT INTO sessions VALUES (?, ?)', (session, now + SESSION_SECONDS))
        cookie = '%s.%s' % (session, sign(self.state, session))
        return '303 See Other', [b''], [
            ('Location', self.link(lang=self.lang)),
            ('Set-Cookie', self.cookie(cookie, SESSION_SECONDS))]

    def logout(self):
        self.state.execute('DELETE FROM sessions WHERE id = ?', (self.session,))
        return '303 See Other', [b''], [('Location', self.link(lang=self.lang)),
                                        ('Set-Cookie', self.cookie('', 0))]

    def cookie(self, value, seconds):
        return ('%s=%s; Path=%s; Max-Age=%d; HttpOnly; Secure; SameSite=Strict'
                % (COOKIE, value, self.path, seconds))

    # -- Pages ---------------------------------------------------------------------------------

    def link(self, **params):
        """A link to the page itself, relative: '?' and its parameters."""
        params = dict((k, v) for k, v in params.items() if v not in (None, ''))
        return '?' + urllib.parse.urlencode(sorted(params.items()))

    def page(self, title, content):
        other = 'en' if self.lang == 'vi' else 'vi'
        logout = '' if self.session is None else (
            '<form method="post" action="%s" class="inline"><input type="hidden" name="action"'
            ' value="logout">%s<button>%s</button></form>' % (
                esc(self.link()), self.hidden(), esc(self.t('logout'))))
        return PAGE % {
            'lang': self.lang, 'title': esc(title), 'css': esc(self.link(css=1)),
            'home': esc(self.link(lang=self.lang)), 'name': esc(self.t('inbox')),
            'switch': esc(self.link(lang=other)), 'other': esc(TEXTS[other]['language']),
            'logout': logout, 'content': content}

    def hidden(self, **fields):
        """The form fields every POST carries: the CSRF token and the language."""
        fields.update(lang=self.lang)
        if self.session is not None:
            fields['csrf'] = csrf_token(self.state, self.session)
        return ''.join('<input type="hidden" name="%s" value="%s">' % (esc(k), esc(v))
                       for k, v in sorted(fields.items()) if v not in (None, ''))

    def login_page(self, problem=None):
        return self.page(self.t('login'), LOGIN % {
            'action': esc(self.link()), 'hidden': self.hidden(action='login'),
            'problem': '<p class="problem">%s</p>' % esc(problem) if problem else '',
            'label': esc(self.t('password')), 'button': esc(self.t('login'))})

    def list_page(self):
        filters = read_filters(self.form, self.settings)
        after = parse_cursor(self.form.get('after') or self.query.get('after'))
        rows, stopped = find_messages(self.database(), filters, after, PAGE_SIZE + 1)
        more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
        zone = zone_offset(self.settings)
        items = ''.join(ROW % {
            'link': esc(self.link(id=row['id'], lang=self.lang)),
            'time': esc(local_time(row['received_at'], zone)), 'phone': shown(row['phone']),
            'text': shown(row['message'][:300] + ('…' if len(row['message']) > 300 else '')),
            'state': esc(self.state_name(row) + (', ' + self.t('fetched') if row['fetched']
                                                 else '')),
            'deliveries': esc(row['deliveries']),
            'class': esc(row['state'])} for row in rows)
        notes = []
        if stopped:
            notes.append(self.t('stopped', SEARCH_BUDGET))
        if not rows:
            notes.append(self.t('none'))
        next_page = ''
        if more:
            cursor = '%s|%d' % (rows[-1]['received_at'], rows[-1]['id'])
            next_page = NEXT % {'action': esc(self.link()), 'button': esc(self.t('older')),
                                'hidden': self.hidden(after=cursor, **filters.form)}
        return self.page(self.t('inbox'), self.health() + self.filter_form(filters) + (
            ''.join('<p class="note">%s</p>' % esc(n) for n in notes)) + (
            TABLE % {'time': esc(self.t('time')), 'phone': esc(self.t('phone')),
                     'text': esc(self.t('text')), 'state': esc(self.t('state')),
                     'deliveries': esc(self.t('deliveries')), 'rows': items}
            if rows else '') + next_page)

    def filter_form(self, filters):
        values = dict((k, esc(filters.form.get(k, ''))) for k in
                      ('from', 'to', 'phone', 'words', 'state'))
        options = ''.join('<option value="%s"%s>%s</option>' % (
            key, ' selected' if filters.form.get('state', '') == key else '',
            esc(self.t('state_' + (key or 'any')))) for key in ('', 'failed', 'waiting',
                                                                'processed'))
        return FILTERS % dict(values, action=esc(self.link()), options=options,
                              hidden=self.hidden(), search=esc(self.t('search')),
                              export=esc(self.t('export')), from_label=esc(self.t('from')),
                              to_label=esc(self.t('to')), phone_label=esc(self.t('phone')),
                              words_label=esc(self.t('words')),
                              state_label=esc(self.t('state')))

    def health(self):
        db, now, lines = self.settings['FIBOSMS_DB'], time.time(), []
        zone = zone_offset(self.settings)
        try:
            conn = self.database()
            last = conn.execute('SELECT max(received_at) FROM messages').fetchone()[0]
            failed = conn.execute("SELECT count(*) FROM messages WHERE state = 'failed'"
                                  ).fetchone()[0]
            waiting = conn.execute("SELECT count(*) FROM messages WHERE state = 'processing'"
                                   " AND claimed_until < ?", (now,)).fetchone()[0]
            lines.append((self.t('last_push'), local_time(last, zone) if last else
                          self.t('never'), True))
            lines.append((self.t('failed'), str(failed + waiting), not failed + waiting))
        except (storage.StorageError, sqlite3.Error, OSError) as exc:
            lines.append((self.t('database'), str(exc), False))
        real = os.path.join(os.path.realpath(os.path.dirname(db)), os.path.basename(db))
        try:
            place = (storage.folders_problem(os.path.dirname(db))
                     or storage.place_problem(real, 'file'))
        except OSError as exc:
            place = str(exc)
        lines.append((self.t('place'), place or '%s: %s' % (db, self.t('private')),
                      place is None))
        try:    # catch-up and the replies, as check reports them, where they were used
            lines += [('%s (%s)' % (self.t('api'), name), value, ok) for name, value, ok in
                      fiboapi.findings(self.database(), self.settings)]
        except (storage.StorageError, sqlite3.Error, OSError) as exc:
            lines.append((self.t('api'), str(exc), False))
        reasons = ownerlog.lines(self.config, 5)
        return HEALTH % {
            'title': esc(self.t('health')),
            'items': ''.join('<li class="%s">%s: %s</li>' % ('ok' if ok else 'problem',
                                                            esc(name), shown(value))
                             for name, value, ok in lines),
            'log_title': esc(self.t('log')),
            'log': ''.join('<li>%s</li>' % shown(line) for line in reasons) or
                   '<li>%s</li>' % esc(self.t('none'))}

    def message_page(self):
        if not re.match(r'^\d{1,18}\Z', self.query['id']):
            raise Answer('400 Bad Request', self.page(self.t('not_found'), ''))
        ident = int(self.query['id'])
        row = self.database().execute('SELECT * FROM messages WHERE id = ?', (ident,)
                                      ).fetchone()
        if row is None:
            raise Answer('404 Not Found', self.page(self.t('not_found'), ''))
        zone, fields = zone_offset(self.settings), []
        if fiboapi.fetched(row):
            fields.append('<dt>%s</dt><dd>%s</dd>' % (esc(self.t('api')),
                                                      esc(self.t('fetched_long'))))
        for name in row.keys():
            value = row[name]
            if name in ('received_at', 'last_delivery_at', 'processed_at') and value:
                value = '%s (%s)' % (local_time(value, zone), value)
            if name == 'extra':     # one line a parameter: a newline in one is shown as \n
                extra = json.loads(value or '{}')
                fields.append('<dt>extra</dt><dd class="pre">%s</dd>' % ('\n'.join(
                    '%s = %s' % (shown(k), shown(extra[k])) for k in sorted(extra)) or '—'))
                continue
            fields.append('<dt>%s</dt><dd%s>%s</dd>' % (
                esc(name), ' class="pre"' if name == 'last_error' else '',
                shown(value if value is not None else '—', keep_lines=name == 'last_error')))
        return self.page(self.t('message'), '<p><a href="%s">%s</a></p><dl>%s</dl>' % (
            esc(self.link(lang=self.lang)), esc(self.t('back')), ''.join(fields)))

    def state_name(self, row):
        if row['state'] == 'processing' and (row['claimed_until'] or 0) < time.time():
            return self.t('state_waiting')
        return self.t('state_' + row['state'])

    def export(self):
        filters = read_filters(self.form, self.settings)
        conn, zone = self.database(), zone_offset(self.settings)
        import commands     # spreadsheet_safe: the one rule of the export command, too

        def lines():
            out = io.StringIO()
            writer = csv.writer(out, lineterminator='\r\n')
            out.write('\ufeff')     # a BOM: Excel then reads UTF-8
            writer.writerow(CSV_COLUMNS)
            sql, params = message_query(filters, None, None, '*')
            cursor = conn.execute(sql, params)
            while True:
                batch = cursor.fetchmany(500)
                for row in batch:
                    writer.writerow([excel_text(row[name]) if name.startswith('phone') else
                                     commands.spreadsheet_safe(
                                         local_time(row[name], zone) if name.endswith('_at')
                                         else row[name]) for name in CSV_COLUMNS])
                yield out.getvalue().encode('utf-8')
                out.seek(0)
                out.truncate()
                if not batch:
                    return
        name = 'fibosms-messages-%s.csv' % time.strftime('%Y%m%d-%H%M%S')
        return '200 OK', lines(), [('Content-Type', 'text/csv; charset=utf-8'),
                                   ('Content-Disposition', 'attachment; filename="%s"' % name)]

    def database(self):
        """The messages' database, read-only; an empty one in memory before the first push."""
        if getattr(self, 'conn', None) is None:
            path = self.settings['FIBOSMS_DB']
            self.conn = open_messages(path) if os.path.exists(path) else empty_database()
        return self.conn


# -- The parts -------------------------------------------------------------------------------

def secure(environ):
    """Whether the request came over HTTPS, or over HTTP from this machine itself, for a
    loopback host name (not a name of the caller's that a rebinding DNS points here)."""
    if environ.get('wsgi.url_scheme') == 'https' or environ.get('HTTPS', '').lower() in (
            'on', '1'):
        return True
    host = re.sub(r':\d{1,5}$', '', environ.get('HTTP_HOST', ''))
    return host in ('127.0.0.1', 'localhost', '[::1]') and receiver.local_caller(
        environ, environ.get('REMOTE_ADDR', ''))


def same_origin(environ):
    """Whether a POST's Origin (or, without one, its Referer) is this page's own origin."""
    tls = environ.get('wsgi.url_scheme') == 'https' or environ.get('HTTPS', '').lower() in (
        'on', '1')
    own = '%s://%s' % ('https' if tls else 'http', environ.get('HTTP_HOST', ''))
    origin = environ.get('HTTP_ORIGIN')
    if origin is not None:     # (PEP 3333: the headers are latin-1 text)
        return hmac.compare_digest(origin.encode('latin-1'), own.encode('latin-1'))
    referer = environ.get('HTTP_REFERER', '')
    return referer == own or referer.startswith(own + '/')


def caller_key(address):
    """What guessing is counted by: the address, an IPv6 one by its /64 (which one user has)."""
    import ipaddress
    try:
        ip = ipaddress.ip_address(address.split('%')[0])
    except ValueError:
        return address[:60]
    if ip.version == 6:
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network('%s/64' % ip, strict=False))
    return str(ip)


def choose_language(asked, accept):
    """'vi' or 'en': the one asked for, else the first the browser names of the two."""
    if asked in TEXTS:
        return asked
    for part in (accept or '').split(','):
        tag = part.split(';')[0].strip().lower()
        if tag[:2] in TEXTS:
            return tag[:2]
    return 'en'


def open_state(path):
    """The page's own small database (the key, the sessions, the failed logins), made 0600 in
    the data folder with the same checks as the messages' database."""
    conn = sqlite3.connect(storage.prepare_place(path), timeout=storage.BUSY_TIMEOUT,
                           isolation_level=None)
    for statement in STATE_SCHEMA:
        conn.execute(statement)
    return conn


def page_key(state):
    row = state.execute("SELECT value FROM keys WHERE name = 'session'").fetchone()
    if row is None:
        state.execute("INSERT OR IGNORE INTO keys VALUES ('session', ?)",
                      (secrets.token_bytes(32),))
        row = state.execute("SELECT value FROM keys WHERE name = 'session'").fetchone()
    return bytes(row[0])


def sign(state, text):
    return hmac.new(page_key(state), text.encode('ascii'), hashlib.sha256).hexdigest()


def csrf_token(state, session):
    return sign(state, 'csrf:' + session)


def find_session(state, cookie_header):
    """The session id of a cookie that is signed, known and not expired; else None."""
    try:
        morsel = SimpleCookie(cookie_header).get(COOKIE)
    except Exception:   # http.cookies raises CookieError and others on a malformed header
        return None
    session, _, signature = (morsel.value if morsel else '').partition('.')
    if not (re.match(r'^[A-Za-z0-9_-]{43}\Z', session) and re.match(r'^[0-9a-f]{64}\Z',
                                                                     signature)):
        return None
    if not hmac.compare_digest(signature, sign(state, session)):
        return None
    row = state.execute('SELECT expires FROM sessions WHERE id = ?', (session,)).fetchone()
    return session if row and row[0] > time.time() else None


def hash_password(password, iterations=PBKDF2_ITERATIONS):
    """The FIBOSMS_INBOX_PASSWORD line's value: pbkdf2_sha256$ITERATIONS$SALT$HASH (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac('sha256', password.encode('utf-8'), salt, iterations)
    return '%s%d$%s$%s' % (HASHED, iterations, base64.b64encode(salt).decode('ascii'),
                           base64.b64encode(digest).decode('ascii'))


def password_matches(password, stored):
    """Whether `password` gives the stored hash (compared in constant time); False for a
    stored value that is no hash of hash_password's (a password written in clear, say)."""
    try:
        kind, iterations, salt, digest = stored.split('$')
        salt, digest, iterations = base64.b64decode(salt), base64.b64decode(digest), \
            int(iterations)
    except ValueError:
        return False
    if kind != 'pbkdf2_sha256' or not 1000 <= iterations <= 10 ** 7:
        return False
    return hmac.compare_digest(hashlib.pbkdf2_hmac(
        'sha256', password.encode('utf-8', 'replace'), salt, iterations), digest)


def open_messages(path):
    """A read-only connection to the messages' database, its place checked first."""
    path = storage.prepare_place(path, create=False)
    conn = sqlite3.connect('file:%s?mode=ro' % urllib.parse.quote(path), uri=True,
                           timeout=storage.BUSY_TIMEOUT)
    conn.row_factory = sqlite3.Row
    return conn


def empty_database():
    """What the pages read before the first push made the database: its table, no row."""
    conn = sqlite3.connect(':memory:')
    conn.row_factory = sqlite3.Row
    for statement in storage.MIGRATIONS[0]:
        conn.execute(statement)
    return conn


class Filters:
    """The list's filters from a form: `sql` [(condition, params)] and `form`, what to send
    again with the next page."""

    def __init__(self):
        self.sql, self.form, self.words = [], {}, []


def read_filters(form, settings):
    filters, zone = Filters(), zone_offset(settings)
    for name, bound in (('from', 'received_at >= ?'), ('to', 'received_at < ?')):
        day = form.get(name, '').strip()
        if re.match(r'^\d{4}-\d{2}-\d{2}$', day):
            try:
                start = calendar.timegm(time.strptime(day, '%Y-%m-%d')) - zone
            except ValueError:
                continue
            filters.sql.append((bound, [storage.utc_iso(start + (86400 if name == 'to' else 0))]))
            filters.form[name] = day
    phone = form.get('phone', '').strip()[:receiver.MAX_PHONE]
    if phone:
        filters.sql.append(('phone_normalised = ?', [receiver.normalise_phone(phone) or '-']))
        filters.form['phone'] = phone
    state = form.get('state', '')
    if state in STATES:
        filters.sql.append((STATES[state], []))
        filters.form['state'] = state
    words = form.get('words', '').split()[:MAX_WORDS]
    for word in words:
        word = word[:MAX_WORD]
        filters.sql.append(("message LIKE ? ESCAPE '\\'", ['%' + re.sub(
            r'([\\%_])', r'\\\1', word) + '%']))
        filters.words.append(word)
    if filters.words:
        filters.form['words'] = ' '.join(filters.words)
    return filters


def parse_cursor(text):
    """(received_at, id) of a page's cursor 'RECEIVED_AT|ID', or None."""
    match = re.match(r'^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\|(\d{1,18})$', text or '')
    return (match.group(1), int(match.group(2))) if match else None


def message_query(filters, after, limit, columns=LIST_COLUMNS):
    """The SELECT of the filtered messages, newest first (received_at, then id), from after
    the cursor `after`: keyset paging, which an index serves without counting rows."""
    where, params = [], []
    for condition, values in filters.sql:
        where.append(condition)
        params += values
    if after:
        where.append('received_at <= ? AND (received_at < ? OR id < ?)')
        params += [after[0], after[0], after[1]]
    sql = 'SELECT %s FROM messages%s ORDER BY received_at DESC, id DESC%s' % (
        columns, ' WHERE ' + ' AND '.join(where) if where else '',
        ' LIMIT %d' % limit if limit else '')
    return sql, params


def find_messages(conn, filters, after, limit):
    """(rows, stopped): the page's rows; `stopped` when the search ran out of its time
    (SEARCH_BUDGET: a text search scans) and the rows are those found until then."""
    sql, params = message_query(filters, after, limit)
    deadline = time.monotonic() + SEARCH_BUDGET
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 10000)
    rows, stopped = [], False
    try:
        cursor = conn.execute(sql, params)
        while len(rows) < limit:
            batch = cursor.fetchmany(10)
            if not batch:
                break
            rows += batch
    except sqlite3.OperationalError as exc:
        if 'interrupt' not in str(exc):
            raise
        stopped = True
    finally:
        conn.set_progress_handler(None, 0)
    return rows, stopped


def zone_offset(settings):
    """FIBOSMS_INBOX_TIMEZONE ('+07:00', the default) in seconds east of UTC."""
    match = re.match(r'^([+-])(\d\d):?(\d\d)$', settings.get('FIBOSMS_INBOX_TIMEZONE')
                     or DEFAULT_TIMEZONE)
    if not match:
        return 7 * 3600
    seconds = int(match.group(2)) * 3600 + int(match.group(3)) * 60
    return seconds if match.group(1) == '+' else -seconds


def local_time(stamp, zone):
    """'2026-11-25T08:26:34.120Z' as '2026-11-25 15:26:34' at `zone` seconds east of UTC."""
    try:
        whole = calendar.timegm(time.strptime(stamp[:19], '%Y-%m-%dT%H:%M:%S'))
    except (TypeError, ValueError):
        return stamp or ''
    return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(whole + zone))


def esc(value):
    return html.escape(str(value), quote=True)


def shown(value, keep_lines=False):
    """A stored value as HTML text: its control and bidirectional characters shown as escapes
    (commands.printable's rule), then HTML-escaped; with keep_lines, a newline also breaks."""
    import commands
    text = str(value)
    if keep_lines:
        return '\n'.join(esc(commands.printable(line)) for line in text.split('\n'))
    return esc(commands.printable(text))


def excel_text(value):
    """A phone for Excel: ="0912345678", a text formula, so that its leading 0 (or +) stays;
    a quote inside is doubled, so nothing can leave the string."""
    return '' if value is None else '="%s"' % str(value).replace('"', '""')


def set_password(config, password, only_if_clear=False):
    """Write FIBOSMS_INBOX_PASSWORD=<hash> into the settings file `config` (made, 0600, if
    missing), in place of any line that set it, and end the sessions open. One writer at a
    time (a lock file beside it); with only_if_clear, only while the line still holds a
    password in clear (two first requests hash it once). The file is replaced whole, by a
    temporary file of its own, so that a reader never sees it half written."""
    import fcntl
    import tempfile
    path = os.path.abspath(config)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        os.makedirs(folder, 0o700)
    lock = os.open(path + '.lock', os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding='utf-8') as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        old = [line for line in lines if line.strip().startswith('FIBOSMS_INBOX_PASSWORD')]
        if only_if_clear and (not old or old[-1].partition('=')[2].strip().startswith(HASHED)):
            return path
        lines = [line for line in lines if line not in old]
        lines.append('FIBOSMS_INBOX_PASSWORD=%s' % hash_password(password))
        fd, temporary = tempfile.mkstemp(dir=folder, prefix='.settings-')   # 0600
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        state = os.path.join(folder, STATE_DB)
        if os.path.exists(state):
            conn = open_state(state)
            conn.execute('DELETE FROM sessions')
            conn.close()
    finally:
        os.close(lock)
    return path


# -- The page's texts and its look -------------------------------------------------------------

TEXTS = {
    'en': {
        'language': 'English', 'inbox': 'Messages', 'login': 'Log in', 'logout': 'Log out',
        'password': 'Password', 'wrong': 'Wrong password.',
        'locked': 'Too many wrong passwords: try again in %d seconds.',
        'expired': 'Your session has ended: log in again.',
        'https_only': 'This page is served over HTTPS only.',
        'no_password': 'The inbox is off: set its password (10 characters or more) with'
                       ' python3 storage.py inbox-password, or write it on the line'
                       ' FIBOSMS_INBOX_PASSWORD= of settings.env.',
        'forbidden': 'Refused: reload the page and try again.',
        'too_long': 'The request is too long.', 'not_found': 'No such message.',
        'broken': 'The inbox failed: receiver.log says why.',
        'time': 'Received', 'phone': 'Phone', 'text': 'Text', 'state': 'State',
        'deliveries': 'Deliveries', 'from': 'From', 'to': 'To', 'words': 'Words in the text',
        'search': 'Search', 'export': 'Download CSV', 'older': 'Older messages',
        'none': 'None.', 'stopped': 'The search stopped after %g s: narrow it by date or'
                                    ' phone to see everything it would find.',
        'health': 'The receiver', 'last_push': 'Last message received',
        'never': 'none yet', 'failed': 'Messages whose hook failed or waits',
        'database': 'Database', 'place': 'Database place', 'private': "this user's own,"
        ' closed to others', 'log': 'Recent reasons (receiver.log)', 'message': 'Message',
        'back': 'Back to the messages', 'state_any': 'Any state', 'state_failed': 'failed',
        'state_waiting': 'waiting', 'state_processing': 'being processed',
        'state_processed': 'processed', 'api': "FiboSMS's API",
        'fetched': 'fetched by catch-up',
        'fetched_long': 'stored by catch-up (storage.py catchup): the gateway gave up pushing'
                        ' it'},
    'vi': {
        'language': 'Tiếng Việt', 'inbox': 'Tin nhắn', 'login': 'Đăng nhập',
        'logout': 'Đăng xuất', 'password': 'Mật khẩu', 'wrong': 'Sai mật khẩu.',
        'locked': 'Sai mật khẩu quá nhiều lần: thử lại sau %d giây.',
        'expired': 'Phiên đăng nhập đã hết: hãy đăng nhập lại.',
        'https_only': 'Trang này chỉ phục vụ qua HTTPS.',
        'no_password': 'Hộp thư đang tắt: đặt mật khẩu (từ 10 ký tự) bằng lệnh python3'
                       ' storage.py inbox-password, hoặc ghi nó vào dòng'
                       ' FIBOSMS_INBOX_PASSWORD= trong settings.env.',
        'forbidden': 'Bị từ chối: tải lại trang rồi thử lại.',
        'too_long': 'Yêu cầu quá dài.', 'not_found': 'Không có tin nhắn này.',
        'broken': 'Hộp thư gặp lỗi: xem lý do trong receiver.log.',
        'time': 'Nhận lúc', 'phone': 'Số điện thoại', 'text': 'Nội dung', 'state': 'Trạng thái',
        'deliveries': 'Số lần gửi', 'from': 'Từ ngày', 'to': 'Đến ngày',
        'words': 'Từ trong nội dung', 'search': 'Tìm', 'export': 'Tải về CSV',
        'older': 'Tin cũ hơn', 'none': 'Không có.',
        'stopped': 'Việc tìm đã dừng sau %g giây: hãy lọc thêm theo ngày hoặc số điện'
                   ' thoại để thấy hết.',
        'health': 'Tình trạng trang nhận', 'last_push': 'Tin nhắn mới nhất',
        'never': 'chưa có', 'failed': 'Tin nhắn xử lý lỗi hoặc đang chờ',
        'database': 'Cơ sở dữ liệu', 'place': 'Nơi lưu dữ liệu',
        'private': 'của riêng người dùng này, người khác không đọc được',
        'log': 'Lý do gần đây (receiver.log)', 'message': 'Tin nhắn',
        'back': 'Quay lại danh sách', 'state_any': 'Mọi trạng thái',
        'state_failed': 'lỗi', 'state_waiting': 'đang chờ',
        'state_processing': 'đang xử lý', 'state_processed': 'đã xử lý',
        'api': 'API của FiboSMS', 'fetched': 'lấy lại qua API',
        'fetched_long': 'lưu bằng lệnh catchup (storage.py catchup): FiboSMSGateway đã ngừng'
                        ' gửi tin này'},
}

PAGE = """<!DOCTYPE html>
<html lang="%(lang)s"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%(title)s</title><link rel="stylesheet" href="%(css)s"></head>
<body><header><a href="%(home)s">%(name)s</a> <a href="%(switch)s">%(other)s</a> %(logout)s
</header><main><h1>%(title)s</h1>
%(content)s</main></body></html>
"""
LOGIN = """%(problem)s<form method="post" action="%(action)s">%(hidden)s
<label>%(label)s <input type="password" name="password" autocomplete="current-password"
required autofocus></label> <button>%(button)s</button></form>
"""
HEALTH = """<section class="health"><h2>%(title)s</h2><ul>%(items)s</ul>
<details><summary>%(log_title)s</summary><ul class="log">%(log)s</ul></details></section>
"""
FILTERS = """<form method="post" action="%(action)s" class="filters">%(hidden)s
<label>%(from_label)s <input type="date" name="from" value="%(from)s"></label>
<label>%(to_label)s <input type="date" name="to" value="%(to)s"></label>
<label>%(phone_label)s <input type="search" name="phone" value="%(phone)s" maxlength="32"
inputmode="tel" autocomplete="off"></label>
<label>%(words_label)s <input type="search" name="words" value="%(words)s" maxlength="200"
autocomplete="off"></label>
<label>%(state_label)s <select name="state">%(options)s</select></label>
<button name="action" value="search">%(search)s</button>
<button name="action" value="export">%(export)s</button></form>
"""
TABLE = """<table><thead><tr><th>%(time)s</th><th>%(phone)s</th><th>%(text)s</th>
<th>%(state)s</th><th>%(deliveries)s</th></tr></thead><tbody>%(rows)s</tbody></table>
"""
ROW = """<tr class="%(class)s"><td><a href="%(link)s">%(time)s</a></td><td>%(phone)s</td>
<td class="text">%(text)s</td><td>%(state)s</td><td>%(deliveries)s</td></tr>
"""
NEXT = """<form method="post" action="%(action)s">%(hidden)s
<button name="action" value="search">%(button)s</button></form>
"""
STYLE = """body { font: 16px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { background: #0b5; padding: .5em 1em; }
header a, header button { color: #fff; margin-right: 1em; }
header button { background: none; border: 1px solid #fff; border-radius: 3px; }
main { padding: 0 1em 2em; max-width: 70em; }
form.inline { display: inline; }
.filters label { display: inline-block; margin: .2em .8em .2em 0; }
.health li.problem { color: #b00; font-weight: bold; }
.problem { color: #b00; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.text { overflow-wrap: anywhere; }
tr.failed td { background: #fee; }
dt { font-weight: bold; margin-top: .5em; }
dd { margin: 0 0 0 1em; overflow-wrap: anywhere; }
dd.pre, .log { white-space: pre-wrap; font-family: monospace; font-size: 90%; }
@media (max-width: 40em) {
  thead { display: none; }
  table, tbody, tr, td { display: block; width: auto; }
  tr { border-bottom: 2px solid #ccc; padding: .4em 0; }
  td { border: none; padding: .1em 0; }
}
"""


application = make_inbox()     # what mod_wsgi and Passenger look for
