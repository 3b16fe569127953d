"""FiboSMS's own web-service API: the client, and catch-up on the SMS the push lost.

Loaded only by ``python3 storage.py catchup``, by ``check`` where FIBOSMS_API_CLIENT_NO or
FIBOSMS_REPLY is set, by the inbox (which marks what catch-up stored, and shows `findings`),
and by the reply to the customer (fiboreply.py), which runs after a message is stored: never
before a push is stored. The owner's guide: docs/, "FiboSMS's API".

The service (FiboSMS's guide "FIBO SMS API", version 2.0): an ASP.NET web service, called as

    GET <FIBOSMS_API_URL>/<Function>?clientNo=<account>&clientPass=<password>&<parameters>

The password travels in the query string, as the service requires: it is in every request
line, which FiboSMS's servers (and, over http://, anyone on the way) can log. This module
never writes it anywhere: not in a log line, an error, a stored row or a command line.

An answer is read in either form: the guide's XML (``<string><DocumentElement><SMSLIST>...``),
or ASP.NET's, that XML as the escaped text of a ``<string>`` element in any namespace
(``http://tempuri.org/`` by default), with or without an XML declaration. Element names are
compared without case (the guide writes ``createddate`` and ``CreatedDate``), values without
the spaces around them (``<Code> 103</Code>``). "Nothing" is ``<DocumentElement />``, an empty
``<string>``, or code 301. Dates are ISO 8601 with +07:00; one without a zone is taken in it.
Bounds: TIMEOUT for the whole call (connecting, sending, the answer), MAX_ANSWER bytes, one
request per call with no redirect followed and no proxy taken from the environment (httpoxy,
as forward.py). An answer holding a DTD or any other ``<!`` declaration but a comment or
CDATA is refused before it is parsed: an entity could make a small answer huge in memory.

Catch-up (`catch_up`). GetCommingSMSList lists the SMS of the last `minutes` minutes, each
with its state; NoClientResponse (5) is an SMS whose push the gateway gave up on, and the only
state taken (the owner's guide says why the others are not). Each such SMS is decided once,
in one BEGIN IMMEDIATE transaction with the record of the decision in fiboapi_sms (keyed by
its ClientCommingSMSID), so that two runs, or a run and a later window, never both store it:
- a message whose guid is its id, of the same phone and text, is the SMS, pushed (with
  another phone or text: undecided);
- else the rows stored by a push of the same phone (receiver.normalise_phone), within
  MATCH_WINDOW of its createddate, not already another SMS's: none of the same text, nor of
  a text the same but for case, spaces, accents or punctuation (a near match): it was lost,
  and is stored; exactly one of the same text, no near match, and no other listed SMS of that
  phone and text nearby: it is that row, pushed; anything else: undecided, reported by check
  and left to the operator (``catchup --store ID`` or ``--ignore ID``), never guessed.
A lost SMS is stored by storage.deliver as a push is, with the guid FETCHED_PREFIX + its id
and an empty raw_query (which no push has: its guid and phone are in it), the API's fields in
``extra`` under "fibosms_api"; then its hook runs (hooks.process), as for a push. `fetched`
tells such a row. fiboapi_runs keeps what each run found, for check.
"""
import calendar
import json
import re
import sqlite3
import sys
import time

import storage

# -- Constants --------------------------------------------------------------------------------

DEFAULT_URL = 'http://center.fibosms.com/Service.asmx'  # the guide's; it mentions no https
TIMEOUT = 8.0           # seconds a call may take in all: a reply and a forward (10 s) fit in
                        # the 20 s a push waits for its hook (receiver.HOOK_WAIT)
MAX_ANSWER = 8 * 1024 * 1024    # bytes of an answer read; a longer one is refused, not cut
USER_AGENT = 'fibosms-receiver'
ZONE = 7 * 3600         # +07:00, the guide's: a date given without a zone is taken in it
NO_SMS = 301            # "No SMS!": an empty list
CODES = {100: 'wrong account (100)', 101: 'wrong phone number (101)',
         102: 'balance zero (102)', 103: 'wrong service type (103)',
         104: 'more SMS than the balance (104)', 200: 'sending (200)', 301: 'no SMS (301)'}
STATES = {0: 'JustReceived', 1: 'Processing', 2: 'Confirmed', 3: 'WrongSyntax', 4: 'Expired',
          5: 'NoClientResponse'}    # ClientCommingSMSStatus
LOST = 5                # the one state taken
DEFAULT_MINUTES = 1440  # a day: how long the gateway tries before it gives up is not given
MAX_MINUTES = 6 * 1440  # under commands.MIN_PURGE_DAYS (7): an older SMS's pushed row may be
                        # purged, and the SMS would then be stored again
MATCH_WINDOW = 3 * 3600     # seconds between createddate and a pushed row's received_at
RECOVER_AFTER = 60.0    # seconds before a 'stored' decision whose row is missing (a run ended
                        # between the two) is stored by another run: not while its run lives
FORGET_AFTER = 8 * 86400    # seconds a decision is kept: longer than any window lists an SMS
RUNS_KEPT = 30 * 86400      # seconds a run's record is kept
SECRET_MIN = 8          # characters of the password from which a text holding it is refused
ID = re.compile(r'[A-Za-z0-9_-]{1,64}$')    # a ClientCommingSMSID we take: it goes in a guid
DATE = re.compile(r'(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d))?(?:\.\d+)?'
                  r'(Z|[+-]\d\d:?\d\d)?$')
DECLARATION = re.compile(r'<!(?!--|\[CDATA\[)')     # <!DOCTYPE, <!ENTITY, <!ELEMENT ...
# The control characters XML 1.0 cannot carry, raw or as references (.NET writes them so):
# read as U+FFFD, so that one SMS holding one does not make the whole list unreadable.
NOT_XML = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f]|&#(?:x0*(?:[0-8bcef]|1[0-9a-f])'
                     '|0*(?:[0-8]|1[124-9]|2[0-9]|3[01]));', re.I)
FETCHED_PREFIX = 'fibosms-api-'
# A row catch-up stored (the inbox filters with it): a push's raw_query is never empty.
FETCHED_SQL = "raw_query = '' AND substr(guid, 1, %d) = '%s'" % (len(FETCHED_PREFIX),
                                                                 FETCHED_PREFIX)

TABLES = (
    """CREATE TABLE IF NOT EXISTS fiboapi_sms (
        sms_id     TEXT PRIMARY KEY,   -- ClientCommingSMSID
        decision   TEXT NOT NULL CHECK (decision IN ('stored', 'pushed', 'undecided',
                                                     'ignored')),
        guid       TEXT UNIQUE,        -- the message it is: ours (stored), the push's (pushed)
        reason     TEXT,               -- why it is undecided
        sms        TEXT,               -- while undecided: the SMS as listed (JSON), to store it
        created_at TEXT,               -- its createddate, UTC, ISO 8601
        decided_at REAL NOT NULL       -- Unix time
    )""",
    "CREATE INDEX IF NOT EXISTS fiboapi_sms_decided ON fiboapi_sms (decided_at)",
    """CREATE TABLE IF NOT EXISTS fiboapi_runs (
        id         INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,      -- Unix time
        ended_at   REAL,               -- NULL: it ended before it finished
        minutes    INTEGER NOT NULL,
        listed     INTEGER NOT NULL DEFAULT 0,  -- SMS in the list, every state
        lost       INTEGER NOT NULL DEFAULT 0,  -- of them NoClientResponse
        stored     INTEGER NOT NULL DEFAULT 0,  -- decided now: stored as new messages
        matched    INTEGER NOT NULL DEFAULT 0,  -- decided now: stored by a push already
        undecided  INTEGER NOT NULL DEFAULT 0,  -- decided now: left to the operator
        unreadable INTEGER NOT NULL DEFAULT 0,  -- lost ones with no usable id
        error      TEXT                -- why the run failed
    )""",
)
SELECT_DECISION = 'SELECT * FROM fiboapi_sms WHERE sms_id = ?'
INSERT_DECISION = """INSERT INTO fiboapi_sms (sms_id, decision, guid, reason, sms, created_at,
    decided_at) VALUES (?, ?, ?, ?, ?, ?, ?)"""
# Rows stored by a push (raw_query not empty) of one phone in a time range, no SMS's yet.
NEARBY = """SELECT guid, message FROM messages WHERE phone_normalised = ?
    AND received_at BETWEEN ? AND ? AND raw_query <> ''
    AND guid NOT IN (SELECT guid FROM fiboapi_sms WHERE guid IS NOT NULL) ORDER BY id"""
END_RUN = """UPDATE fiboapi_runs SET ended_at = ?, listed = ?, lost = ?, stored = ?,
    matched = ?, undecided = ?, unreadable = ?, error = ? WHERE id = ?"""


class ApiError(Exception):
    """A call with no answer to read. The message (also `summary`) names the function, the
    host and what happened: never the password, a phone or a text. `sent` is False only when
    no connection was made, so that nothing of the request left."""

    def __init__(self, summary, sent=True):
        Exception.__init__(self, summary)
        self.summary, self.sent = summary, sent


class Unreadable(Exception):
    """An answer that is not one of the forms read (the reason is the message)."""


# -- The client -------------------------------------------------------------------------------

class Answer:
    """What a call answered: `rows` (a list of {field name in lower case: text}), `code` (an
    <SMS><Code> status), or `text` (a bare value: <string>529</string>)."""

    def __init__(self, rows=None, code=None, text=None):
        self.rows, self.code, self.text = rows, code, text


class Client:
    """FiboSMS's web service at `url`, for the account `client_no` and its `password`."""

    def __init__(self, url, client_no, password, timeout=TIMEOUT):
        self.https, self.host, self.port, self.path = read_url(url)
        self.where = ('[%s]' % self.host if ':' in self.host else self.host) + (
            '' if self.port == (443 if self.https else 80) else ':%d' % self.port)
        self.client_no, self.password, self.timeout = client_no, password, timeout

    def __repr__(self):     # a traceback or a debugger never shows the password
        return '<fiboapi.Client %s>' % self.where

    @classmethod
    def from_settings(cls, settings):
        """The client of FIBOSMS_API_URL, _CLIENT_NO and _CLIENT_PASS; SettingError if unset."""
        from receiver import SettingError
        client_no = (settings.get('FIBOSMS_API_CLIENT_NO') or '').strip()
        password = settings.get('FIBOSMS_API_CLIENT_PASS') or ''
        if not client_no or not password:
            raise SettingError('FIBOSMS_API_CLIENT_NO and FIBOSMS_API_CLIENT_PASS must both be'
                               ' set: the account of FiboSMS\'s API (clientNo, clientPass)')
        return cls(settings.get('FIBOSMS_API_URL') or DEFAULT_URL, client_no, password)

    def call(self, function, params=()):
        """The Answer of `function` called with `params` ((name, value) pairs); ApiError when
        there is none to read."""
        try:
            return parse(self.get(function, params))
        except Unreadable as exc:
            raise ApiError('FiboSMS %s at %s: %s' % (function, self.where, exc)) from None

    def get(self, function, params):
        """The body of the answer to GET <path>/<function>?clientNo=...&clientPass=...&params,
        read within the timeout, at most MAX_ANSWER bytes; else ApiError. The connection
        as forward.py makes it (forward.connect), cut by a watchdog at the deadline."""
        import http.client
        import socket
        import threading
        import urllib.parse
        import forward
        where = 'FiboSMS %s at %s: ' % (function, self.where)
        query = urllib.parse.urlencode([('clientNo', self.client_no),
                                        ('clientPass', self.password)] + list(params))
        deadline = time.monotonic() + self.timeout
        try:
            sock = forward.connect(self, deadline)
        except (OSError, ValueError) as exc:    # ValueError: 3.6's ssl.CertificateError
            raise ApiError(where + 'no connection (%s)' % (
                'none within %g s' % self.timeout if isinstance(exc, socket.timeout)
                else type(exc).__name__), sent=False) from None
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.sock, late = sock, threading.Event()
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), forward.cut_off,
                                   (sock, late))
        watchdog.daemon = True      # never what keeps a process from ending
        watchdog.start()
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            conn.request('GET', '%s/%s?%s' % (self.path, function, query), headers={
                'User-Agent': USER_AGENT, 'Accept': 'text/xml', 'Connection': 'close'})
            response = conn.getresponse()
            body = response.read(MAX_ANSWER + 1)
            if late.is_set():   # cut off: what was read is a part
                raise socket.timeout('timed out')
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(where + ('no answer within %g s' % self.timeout
                                    if late.is_set() or isinstance(exc, socket.timeout)
                                    else 'no answer (%s)' % type(exc).__name__)) from None
        finally:
            watchdog.cancel()
            conn.close()
        if response.status != 200:
            raise ApiError(where + 'HTTP %d' % response.status)
        if len(body) > MAX_ANSWER:
            raise ApiError(where + 'an answer over %d bytes: refused' % MAX_ANSWER)
        return body

    def comming_sms(self, minutes):
        """GetCommingSMSList: the rows of the SMS of the last `minutes` minutes."""
        answer = self.call('GetCommingSMSList', [('minutes', '%d' % minutes)])
        if answer.code == NO_SMS:
            return []
        if answer.code is not None or answer.rows is None:
            raise ApiError('FiboSMS GetCommingSMSList at %s: %s' % (self.where, 'code %s' % (
                CODES.get(answer.code, answer.code)) if answer.code is not None
                else 'an answer that is no list'))
        return answer.rows

    def send(self, phone, text, sms_guid, service_type, brand=None):
        """SendSMS, or SendMaskedSMS with a brand name: the Answer (code 200: sending)."""
        params = [('phoneNumber', phone), ('smsMessage', text), ('smsGUID', sms_guid),
                  ('serviceType', service_type)]
        if brand:
            return self.call('SendMaskedSMS', [('senderName', brand)] + params)
        return self.call('SendSMS', params)


def read_url(url):
    """(https, host, port, path) of FIBOSMS_API_URL; SettingError if it is not
    http(s)://host[:port]/path (no user, query or fragment)."""
    import urllib.parse
    from receiver import SettingError
    problem = SettingError('FIBOSMS_API_URL is not http(s)://host/path, like %s' % DEFAULT_URL)
    if not url or any(not 32 < ord(c) < 127 for c in url):
        raise problem
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:      # a port that is no number or out of range, an unclosed [IPv6
        raise problem from None
    if (parts.scheme not in ('http', 'https') or not parts.hostname or parts.query
            or parts.fragment or parts.username is not None):
        raise problem
    https = parts.scheme == 'https'
    return https, parts.hostname, port or (443 if https else 80), parts.path.rstrip('/')


# -- Reading an answer ------------------------------------------------------------------------

def parse(body):
    """The Answer in `body` (bytes): the guide's XML, or that XML as the escaped text of
    ASP.NET's <string> element; Unreadable otherwise."""
    root = element(text_of(body))
    if local(root.tag) == 'string':
        if len(root) == 0:      # ASP.NET's: the XML as text, or a bare value
            inner = (root.text or '').strip()
            if not inner.startswith('<'):
                return Answer(rows=[] if not inner else None, text=inner)
            root = element(inner)
        elif len(root) == 1:    # the guide's: the XML inside <string>
            root = root[0]
        else:
            raise Unreadable('a <string> of %d elements' % len(root))
    return answer_of(root)


def text_of(body):
    """`body` as text: UTF-8 (ASP.NET's), else Windows-1258, else Latin-1; UTF-16 by its byte
    order mark."""
    if body[:2] in (b'\xff\xfe', b'\xfe\xff'):
        text = body.decode('utf-16', 'replace')
    else:
        for charset in ('utf-8-sig', 'cp1258', 'latin-1'):
            try:
                text = body.decode(charset)
                break
            except UnicodeDecodeError:
                continue
    return text


def element(text):
    """The root element of the XML `text` (its XML declaration taken off), refused
    (Unreadable) if it holds a DTD: ElementTree would expand the entities it defines."""
    import xml.etree.ElementTree as ElementTree
    text = re.sub(r'^\s*<\?xml[^>]*\?>', '', text)
    if DECLARATION.search(text):
        raise Unreadable('an answer with a DTD or an entity: refused')
    try:
        return ElementTree.fromstring(NOT_XML.sub('\ufffd', text))
    except ElementTree.ParseError as exc:   # its text is a position, never the content
        raise Unreadable('an answer that is not XML (%s)' % exc) from None


def local(tag):
    """An element's name without its namespace, in lower case."""
    return tag.rpartition('}')[2].lower()


def answer_of(root):
    """The Answer an answer's root element holds: a status (<SMS><Code>), rows (of
    <DocumentElement>, or <NewDataSet>), or a value."""
    fields = dict((local(child.tag), (child.text or '').strip()) for child in root)
    if local(root.tag) == 'sms' and 'code' in fields:
        if not re.match(r'-?[0-9]{1,6}$', fields['code']):
            raise Unreadable('a code that is no number')
        return Answer(code=int(fields['code']), text=fields.get('message', ''))
    if local(root.tag) in ('documentelement', 'newdataset'):   # a DataTable's, a DataSet's
        return Answer(rows=[dict((local(field.tag), field.text or '') for field in row)
                            for row in root])
    if len(root) == 0:
        return Answer(text=(root.text or '').strip())
    raise Unreadable('an answer that is no list nor status')  # its names unquoted: the server's


def parse_date(text):
    """Unix time of an ISO 8601 date such as 2009-04-22T16:37:00+07:00 (spaces ignored; no zone:
    +07:00); None if it is not one."""
    match = DATE.match(''.join(text.split()))
    if not match:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        t = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute),
                             int(second or 0), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if zone == 'Z':
        return float(t)
    offset = ZONE if zone is None else (int(zone[1:3]) * 3600 + int(zone[-2:]) * 60) * (
        -1 if zone[0] == '-' else 1)
    return float(t - offset)


def read_sms(row):
    """An SMS of GetCommingSMSList as a dict of its fields, values stripped of the padding the
    guide shows; 'problem' says what makes it unusable."""
    def get(name):
        return (row.get(name) or '').strip()
    state = get('clientcommingsmsstatus')
    sms = {'id': get('clientcommingsmsid'), 'phone': get('phonenumber'),
           'text': get('message'), 'createddate': get('createddate'),
           'service_type_id': get('servicetypeid'), 'service_type_name': get('servicetypename'),
           'state': int(state) if re.match(r'[0-9]{1,3}$', state) else None}
    sms['created'] = parse_date(sms['createddate'])
    if not ID.match(sms['id']):
        sms['problem'] = 'an id that is not 1 to 64 letters, digits, - or _'
    return sms


# -- Catch-up ---------------------------------------------------------------------------------

def prepare(conn):
    """Make catch-up's tables in the messages database, if they are not there."""
    for statement in TABLES:
        conn.execute(statement)


def fetched(row):
    """Whether the message `row` (a dict or sqlite3.Row) was stored by catch-up, not pushed."""
    return row['raw_query'] == '' and row['guid'].startswith(FETCHED_PREFIX)


def command(args):
    """``storage.py catchup [--minutes N]``, ``--store ID``, ``--ignore ID``: the exit code.
    The database is made if there is none yet (a page down from the start), as a push makes
    it: in its place, checked (storage.connect)."""
    import contextlib
    settings = dict(args.settings, FIBOSMS_DB=args.db)
    minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes
    if not 1 <= minutes <= MAX_MINUTES:
        print('storage.py catchup: --minutes must be 1 to %d (%d days: older pushed messages'
              ' may be purged)' % (MAX_MINUTES, MAX_MINUTES // 1440), file=sys.stderr)
        return 2
    conn = storage.connect(args.db, settings.get('FIBOSMS_JOURNAL'))
    journal = conn.execute('PRAGMA journal_mode').fetchone()[0]

    def use():
        return contextlib.closing(storage.connect(args.db, journal, check=False))
    try:
        prepare(conn)
        if args.store or args.ignore:
            return resolve(conn, use, settings, args.store or args.ignore, bool(args.store))
        return catch_up(conn, use, settings, minutes, print)
    finally:
        conn.close()


def catch_up(conn, use, settings, minutes, say):
    """One run over the last `minutes` minutes: each lost SMS decided (`decide`), stored if
    lost, its hook run; `say` gets one line for each and one for the run. The exit code: 1
    when the list could not be had, or an SMS was left undecided or unreadable."""
    from receiver import SettingError
    try:
        client = Client.from_settings(settings)
    except SettingError as exc:
        say('catchup: %s' % exc.reason)
        return 2
    now = time.time()
    with storage.Transaction(conn):
        run = conn.execute('INSERT INTO fiboapi_runs (started_at, minutes) VALUES (?, ?)',
                           (now, minutes)).lastrowid
        conn.execute("DELETE FROM fiboapi_sms WHERE decided_at < ? AND decision <> 'undecided'",
                     (now - FORGET_AFTER,))
        conn.execute('DELETE FROM fiboapi_runs WHERE started_at < ?', (now - RUNS_KEPT,))
    counts = dict.fromkeys(('listed', 'lost', 'stored', 'matched', 'undecided',
                            'unreadable'), 0)
    try:
        listed = [read_sms(row) for row in client.comming_sms(minutes)]
    except ApiError as exc:
        end_run(conn, run, counts, exc.summary)
        say('catchup: %s' % exc.summary)
        return 1
    counts['listed'] = len(listed)
    groups = {}     # (phone, folded text): the listed SMS of it, to find one's others at once
    for sms in listed:
        groups.setdefault(key_of(sms), []).append(sms)
    secrets = [s for s in (settings.get('FIBOSMS_TOKEN'), client.password if len(
        client.password) >= SECRET_MIN else None) if s]
    lost = [sms for sms in listed if sms['state'] == LOST]
    counts['lost'] = len(lost)
    for sms in sorted(lost, key=lambda s: (s['created'] or 0, s['id'])):
        if 'problem' in sms:
            counts['unreadable'] += 1
            say('catchup: a lost SMS not stored: %s' % sms['problem'])
            continue
        outcome, detail = decide(conn, sms, groups, secrets, now - minutes * 60)
        if outcome == 'store':
            counts['stored'] += 1
            detail = store(conn, use, settings, sms)
        elif outcome in ('pushed', 'undecided'):
            counts['matched' if outcome == 'pushed' else 'undecided'] += 1
        if outcome != 'known':
            say('%s %s: %s' % (sms['id'], {'store': 'lost', 'pushed': 'stored by a push'}.get(
                outcome, outcome), printable(detail)))
    end_run(conn, run, counts, None)
    say('catchup: %d SMS in the last %d minutes, %d lost: %d stored now, %d stored by a push,'
        ' %d undecided%s' % (counts['listed'], minutes, counts['lost'], counts['stored'],
                             counts['matched'], counts['undecided'], ', %d unreadable' % (
                                 counts['unreadable']) if counts['unreadable'] else ''))
    return 1 if counts['undecided'] or counts['unreadable'] else 0


def end_run(conn, run, counts, error):
    """Record the end of the run `run`: what it found, or the `error` it failed with."""
    with storage.Transaction(conn):
        conn.execute(END_RUN, (time.time(), counts['listed'], counts['lost'], counts['stored'],
                               counts['matched'], counts['undecided'], counts['unreadable'],
                               error, run))


def decide(conn, sms, groups, secrets, listed_from):
    """('store' | 'pushed' | 'undecided' | 'known', what it is or why) for the lost `sms`, and
    its decision recorded, in one BEGIN IMMEDIATE transaction: two runs at once decide it once.
    'known': decided before; 'store' also for one decided 'stored' whose row is missing."""
    now = time.time()
    with storage.Transaction(conn):
        known = conn.execute(SELECT_DECISION, (sms['id'],)).fetchone()
        if known is not None:
            missing = known['decision'] == 'stored' and conn.execute(
                storage.SELECT_MESSAGE, (known['guid'],)).fetchone() is None
            if missing and known['decided_at'] < now - RECOVER_AFTER:
                return 'store', None
            return 'known', known['decision']
        decision, guid, reason = match(conn, sms, groups, secrets, listed_from)
        keep = json.dumps(sms, ensure_ascii=False) if decision == 'undecided' and not (
            reason.startswith('it holds')) else None
        created = storage.utc_iso(sms['created']) if sms['created'] is not None else None
        try:
            conn.execute(INSERT_DECISION, (sms['id'], decision, guid, reason, keep, created,
                                           now))
        except sqlite3.IntegrityError:  # `guid` is another SMS's (UNIQUE): not this one's
            decision, guid, reason = 'undecided', None, 'its push row is another SMS\'s'
            conn.execute(INSERT_DECISION, (sms['id'], decision, None, reason, keep, created,
                                           now))
    return ('store' if decision == 'stored' else decision), guid or reason


def match(conn, sms, groups, secrets, listed_from):
    """(decision, guid, reason) of the lost `sms` by the rule of this module's docstring:
    ('pushed', the push's guid, None), ('stored', ours, None) or ('undecided', None, why).
    `groups`: the listed SMS by `key_of`; `listed_from`: when the list begins."""
    from receiver import normalise_phone
    ours = FETCHED_PREFIX + sms['id']
    if any(secret in value for secret in secrets for value in sms.values()
           if isinstance(value, str)):
        return 'undecided', None, 'it holds FIBOSMS_TOKEN or the API password: not stored'
    row = conn.execute(storage.SELECT_MESSAGE, (ours,)).fetchone()
    if row is not None:     # stored by a run whose decision is forgotten; or a push's guid
        return ('stored', ours, None) if fetched(row) else (
            'undecided', None, 'a push has the guid %s' % ours)
    phone, created = normalise_phone(sms['phone']), sms['created']
    if not phone or created is None:
        return 'undecided', None, 'it has no %s' % (
            'phone number' if not phone else 'createddate')
    same = conn.execute(storage.SELECT_MESSAGE, (sms['id'],)).fetchone()
    if same is not None and not fetched(same):
        if (same['phone_normalised'], same['message'].strip()) == (phone, sms['text']):
            return 'pushed', same['guid'], None
        return 'undecided', None, 'a push has its id as guid, with another phone or text'
    rows = conn.execute(NEARBY, (phone, storage.utc_iso(created - MATCH_WINDOW),
                                 storage.utc_iso(created + MATCH_WINDOW))).fetchall()
    text, loose = sms['text'], fold(sms['text'])
    exact = [r['guid'] for r in rows if r['message'].strip() == text]
    near = [r['guid'] for r in rows if r['message'].strip() != text
            and fold(r['message']) == loose]
    if not exact and not near:
        return 'stored', ours, None
    others = [s for s in groups.get(key_of(sms), []) if s is not sms and (
        s['created'] is None or abs(s['created'] - created) <= 2 * MATCH_WINDOW)]
    seen = created - 2 * MATCH_WINDOW >= listed_from  # every SMS whose row could be here
    if len(exact) == 1 and not near and not others and seen:
        return 'pushed', exact[0], None
    return 'undecided', None, (
        '%d pushed of this phone and text, %d of a text the same but for case, spaces or'
        ' accents, %d other SMS of it listed, within %d hours%s' % (
            len(exact), len(near), len(others), MATCH_WINDOW // 3600,
            '' if seen else
            '; the list does not go back that far: run with a larger --minutes'))


def store(conn, use, settings, sms):
    """Store the lost `sms` as a message (guid FETCHED_PREFIX + its id) as a push is stored,
    then run its hook; what became of it, for the run's line."""
    import hooks
    from receiver import normalise_phone
    guid = FETCHED_PREFIX + sms['id']
    if conn.execute(storage.SELECT_MESSAGE, (guid,)).fetchone() is not None:
        return 'stored already as %s' % guid
    extra = dict((k, sms[k]) for k in ('id', 'state', 'createddate', 'service_type_id',
                                       'service_type_name'))
    push = {'guid': guid, 'phone': sms['phone'], 'phone_normalised': normalise_phone(
        sms['phone']), 'message': sms['text'], 'charset': 'utf-8', 'raw_query': '',
        'remote_addr': None, 'extra': json.dumps({'fibosms_api': extra}, ensure_ascii=False,
                                                 sort_keys=True)}
    hooked = hooks.configured(settings)
    action, _ = storage.deliver(conn, push, storage.CLAIM_SECONDS if hooked else None)
    if action != 'run':
        return 'stored as %s%s' % (guid, '' if action == 'done' else '; hook not run now (%s):'
                                   ' storage.py retry runs it' % action)
    failure = hooks.process(use, guid, lambda: hooks.load(settings))
    return 'stored as %s, %s' % (guid, 'hook failed: %s' % failure if failure
                                 else 'hook succeeded')


def resolve(conn, use, settings, sms_id, keep):
    """``catchup --store ID`` (keep) or ``--ignore ID``: the operator's decision on an SMS left
    undecided, recorded in one transaction so that it is taken once."""
    with storage.Transaction(conn):
        known = conn.execute(SELECT_DECISION, (sms_id,)).fetchone()
        if known is None or known['decision'] != 'undecided' or (keep and not known['sms']):
            print('storage.py catchup: no undecided SMS %s%s' % (printable(sms_id), (
                ' that can be stored (its text was not kept)' if known is not None and
                known['decision'] == 'undecided' else '')), file=sys.stderr)
            return 1
        conn.execute("UPDATE fiboapi_sms SET decision = ?, guid = ?, sms = NULL, reason = ?"
                     " WHERE sms_id = ?", ('stored' if keep else 'ignored', FETCHED_PREFIX +
                                           sms_id if keep else None, 'by the operator',
                                           sms_id))
    print('%s %s' % (printable(sms_id), store(conn, use, settings, json.loads(known['sms']))
                     if keep else 'ignored'))
    return 0


def key_of(sms):
    """What SMS that may be one another's share: the phone, the text loosely (`fold`)."""
    from receiver import normalise_phone
    return normalise_phone(sms['phone']), fold(sms['text'])


def fold(text):
    """`text` as compared loosely: letters and digits alone, without case or accents."""
    return ''.join(c for c in loosen(text) if c.isalnum())


def loosen(text):
    """`text` in lower case without accents, đ as d, compatibility forms (ＤＫ) as theirs."""
    import unicodedata
    text = unicodedata.normalize('NFKD', text.replace('đ', 'd').replace('Đ', 'D'))
    return ''.join(c for c in text if not unicodedata.combining(c)).casefold()


def printable(value):
    import commands     # loaded already when a command runs this
    return commands.printable(value)


# -- What check reports -----------------------------------------------------------------------

def findings(conn, settings):
    """check's lines, (name, what was found, whether it is fine): catch-up's settings, when it
    last ran and what it found, the SMS left undecided, and the replies (fiboreply.py)."""
    from receiver import SettingError
    found, now = [], time.time()
    if settings.get('FIBOSMS_API_CLIENT_NO') or settings.get('FIBOSMS_API_CLIENT_PASS'):
        try:
            Client.from_settings(settings)
        except SettingError as exc:
            found.append(('settings', exc.summary, False))
    tables = set(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type ="
                                            " 'table' AND name LIKE 'fiboapi%'"))
    if 'fiboapi_runs' in tables:
        found += runs_findings(conn, now)
    elif settings.get('FIBOSMS_API_CLIENT_NO'):
        found.append(('catchup', "never ran (the owner's guide in docs/ has its cron line)",
                      True))
    if 'fiboapi_replies' in tables:
        import fiboreply
        found += fiboreply.findings(conn, settings, now)
    return found


def runs_findings(conn, now):
    """The lines on catch-up's runs: the last, the lost SMS of the last day, the undecided."""
    found = []
    last = conn.execute('SELECT * FROM fiboapi_runs ORDER BY id DESC LIMIT 1').fetchone()
    if last is None:
        found.append(('catchup', 'never ran', True))
    else:
        ago = (now - last['started_at']) / 3600
        when = '%s, %.1f hours ago' % (storage.utc_iso(last['started_at']), ago)
        if last['ended_at'] is None:
            found.append(('catchup', 'the last run, %s, has not finished%s' % (when, (
                ': it ended before it could' if ago > 0.25 else '')), ago <= 0.25))
        elif last['error']:
            found.append(('catchup', 'the last run, %s, failed: %s' % (when, last['error']),
                          False))
        else:
            found.append(('catchup', 'last ran %s: %d SMS listed, %d lost; newly decided: %d'
                          ' stored, %d stored by a push, %d undecided%s%s' % (
                              when, last['listed'], last['lost'], last['stored'],
                              last['matched'], last['undecided'], '; %d lost ones with no'
                              ' usable id: not stored' % last['unreadable']
                              if last['unreadable'] else '',
                              '; not in a day: is its cron line there?' if ago > 24 else ''),
                          ago <= 24 and not last['unreadable']))
    stored = conn.execute('SELECT coalesce(sum(stored), 0) FROM fiboapi_runs WHERE'
                          ' started_at > ?', (now - 86400,)).fetchone()[0]
    if stored:
        found.append(('catchup_lost', 'the push lost %d SMS in the last 24 hours, stored by'
                      ' catch-up: was the page down? storage.py log says why pushes were'
                      ' answered 1' % stored, False))
    undecided = conn.execute("SELECT sms_id, reason FROM fiboapi_sms WHERE decision ="
                             " 'undecided' ORDER BY decided_at").fetchall()
    if undecided:
        found.append(('undecided', '%d lost SMS not stored: %s; decide with storage.py catchup'
                      ' --store ID (it is new) or --ignore ID (it is stored)' % (
                          len(undecided), '; '.join('%s (%s)' % tuple(r) for r in
                                                    undecided[:5])), False))
    return found
