"""The reply to the customer: one SMS back through FiboSMS's API (fiboapi.py), chosen by the
message's first word, at most one per message, ever.

Loaded only where FIBOSMS_REPLY is set: by hooks.load, after the message is stored (pushed, or
stored by catch-up), and by ``storage.py retry`` and ``check``. The owner's guide: docs/,
"FiboSMS's API"; each reply costs what the account pays for an SMS, for each of its parts.

The rules, FIBOSMS_REPLY, a JSON object: {"*": "the default reply", "DK": "...", "HUY": ""}.
A message's keyword is its first run of letters and digits, without case or accents ("dk",
"ĐK", "Dk" are one keyword); "*" answers any other message; "" or no rule: no reply. The text
is the owner's alone: nothing of the message goes back. FIBOSMS_REPLY_ASCII=yes sends it
without diacritics (đ as d), as an SMS of 160 characters rather than 70.

At most one reply per message, ever, whatever runs its hook again (the gateway's retry, a
forward that failed, retry, catch-up), by its row in fiboapi_replies, keyed by the guid:
- Decided once: in one BEGIN IMMEDIATE transaction the row is made, with the text to send or
  why none ('skipped': no rule, not a mobile number, sent more than TOO_OLD ago,
  FIBOSMS_REPLY_PER_DAY replies to that phone, or FIBOSMS_REPLY_A_DAY to all, in the last 24
  hours, counted in the same transaction), and marked 'sending';
  the COMMIT returns before the request leaves.
- Sent once: a row is never decided again. One left 'sending' (its process died), or whose
  request left with no answer to read, is 'unknown': never sent again, named by check.
- Only a request that never left (no connection was made) is made again, 'pending': by the
  hook's next run or ``storage.py retry``, TRIES times in all, within PENDING_FOR.
- smsGUID, the reply's id at FiboSMS, is derived from the guid (uuid5): the same each time.
- The API's codes: 200 'sent'; any other 'refused' with it and one log line, never a retry
  (100 wrong account, 101 wrong phone number, 102 balance zero, 103 wrong service type, 104
  over the balance); check names 100, 102, 103 and 104 until a later reply is sent.
- The reply never fails the message's hook: the forward or FIBOSMS_HANDLER's function runs
  after it whatever became of it, and their failure never sends it again. Only a database
  error before the request leaves fails the hook: nothing was sent, the other has not run.
A log line names the guid and the outcome: never the phone, a text or the password.
"""
import json
import re
import time
import uuid

import fiboapi
import storage

MAX_REPLY = 459         # characters of a reply: 3 SMS in the GSM alphabet, 7 in Unicode
DEFAULT_PER_DAY, MAX_PER_DAY = 3, 100   # replies to one phone in any 24 hours
DEFAULT_A_DAY = 500     # replies to all phones in any 24 hours: what a forged SMS list (over
                        # http://) or a flood of pushes can cost at most; FIBOSMS_REPLY_A_DAY
TRIES = 3               # requests that never left, in all, before a reply is 'unsent'
PENDING_FOR = 86400.0   # seconds a reply may wait for a connection: later, it would confuse
TOO_OLD = 86400.0       # seconds after its SMS was sent that a message gets no reply: so,
                        # replies newly set answer no week-old failed message that retry runs
STALE = fiboapi.TIMEOUT + 60.0  # seconds after which a 'sending' row's process is gone
FORGET_PHONE = 2 * 86400.0      # seconds a reply keeps its phone: the per-day limit's only
UNKNOWN_FOR = 7 * 86400.0       # seconds check names a reply whose outcome is unknown
SCAN = 160              # characters of a message read for its keyword
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, 'fibosms-receiver:reply')   # of the smsGUIDs
ACCOUNT_CODES = {100: 'check FIBOSMS_API_CLIENT_NO and FIBOSMS_API_CLIENT_PASS',
                 102: "top up the account's balance", 103: 'check FIBOSMS_API_SERVICE_TYPE',
                 104: "top up the account's balance"}    # refusals of every reply, not one
MOBILE = re.compile(r'84[0-9]{9,10}$')  # a Vietnamese mobile number, international digits
BRAND = re.compile(r'[A-Za-z0-9][A-Za-z0-9 ._-]{0,10}$')   # an alphanumeric sender: 11 at most
YES, NO = ('yes', 'true', 'on', '1'), ('no', 'false', 'off', '0', '')

TABLES = (
    """CREATE TABLE IF NOT EXISTS fiboapi_replies (
        guid        TEXT PRIMARY KEY,       -- the message replied to
        sms_guid    TEXT NOT NULL UNIQUE,   -- smsGUID: the reply's id at FiboSMS
        phone       TEXT,                   -- the message's phone_normalised, for the limit;
                                            -- NULL after FORGET_PHONE, or when skipped
        state       TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'refused',
                                                   'unknown', 'unsent', 'skipped')),
        rule        TEXT,                   -- the keyword whose reply it is ('*': the default)
        text        TEXT,                   -- the reply
        code        INTEGER,                -- the API's code
        reason      TEXT,                   -- why it was not sent, or may not have been
        attempts    INTEGER NOT NULL DEFAULT 0,     -- requests made
        created_at  REAL NOT NULL,          -- when it was decided, Unix time
        tried_at    REAL,                   -- when the last request started
        answered_at REAL                    -- when its outcome was recorded
    )""",
    "CREATE INDEX IF NOT EXISTS fiboapi_replies_phone ON fiboapi_replies (phone, created_at)",
    "CREATE INDEX IF NOT EXISTS fiboapi_replies_state ON fiboapi_replies (state, created_at)",
)
SELECT_REPLY = 'SELECT * FROM fiboapi_replies WHERE guid = ?'
INSERT_REPLY = """INSERT INTO fiboapi_replies (guid, sms_guid, phone, state, rule, text,
    reason, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
TODAY = """SELECT count(*) FROM fiboapi_replies WHERE phone = ? AND created_at > ?
    AND state IN ('pending', 'sending', 'sent', 'unknown')"""   # those that cost, or may
TODAY_ALL = """SELECT count(*) FROM fiboapi_replies WHERE created_at > ?
    AND state IN ('pending', 'sending', 'sent', 'unknown')"""
TAKE = """UPDATE fiboapi_replies SET state = 'sending', attempts = attempts + 1, tried_at = ?
    WHERE guid = ? AND state = 'pending' AND attempts < ?"""
# 'unknown' too: a slow process's outcome, recorded after `resend` gave it up for dead.
RECORD = """UPDATE fiboapi_replies SET state = ?, code = ?, reason = ?, answered_at = ?
    WHERE guid = ? AND state IN ('sending', 'unknown')"""
MARK_STALE = """UPDATE fiboapi_replies SET state = 'unknown',
    reason = 'its process ended before FiboSMS answered; not sent again'
    WHERE state = 'sending' AND tried_at < ?"""
GIVE_UP = """UPDATE fiboapi_replies SET state = 'unsent', reason = 'no connection for a day'
    WHERE state = 'pending' AND created_at < ?"""
FORGET = """UPDATE fiboapi_replies SET phone = NULL WHERE phone IS NOT NULL
    AND state <> 'pending' AND created_at < ?"""


class Replier:
    """The hook where FIBOSMS_REPLY is set: ``Replier(settings, hook)(message)`` replies to the
    message (at most once), then calls `hook` (the forward, or FIBOSMS_HANDLER's function),
    if any. SettingError, before anything is sent, for a setting that cannot work."""

    def __init__(self, settings, hook=None):
        from receiver import SettingError
        self.hook = hook
        self.rules = read_rules(settings.get('FIBOSMS_REPLY'), yes(settings,
                                                                   'FIBOSMS_REPLY_ASCII'))
        self.client = fiboapi.Client.from_settings(settings)
        self.service_type = (settings.get('FIBOSMS_API_SERVICE_TYPE') or '').strip()
        if not re.match(r'[0-9]{1,9}$', self.service_type):
            raise SettingError('FIBOSMS_API_SERVICE_TYPE must be the number of the account\'s'
                               ' SMS service at FiboSMS (serviceType; 3: its e-mail test)')
        self.brand = (settings.get('FIBOSMS_REPLY_BRAND') or '').strip() or None
        if self.brand is not None and not BRAND.match(self.brand):
            raise SettingError('FIBOSMS_REPLY_BRAND must be a registered brand name: 1 to 11'
                               ' letters, digits, spaces, ".", "-" or "_"')
        per_day = (settings.get('FIBOSMS_REPLY_PER_DAY') or str(DEFAULT_PER_DAY)).strip()
        if not (re.match(r'[0-9]{1,3}$', per_day) and 1 <= int(per_day) <= MAX_PER_DAY):
            raise SettingError('FIBOSMS_REPLY_PER_DAY must be a number from 1 to %d'
                               % MAX_PER_DAY)
        self.per_day = int(per_day)
        a_day = (settings.get('FIBOSMS_REPLY_A_DAY') or str(DEFAULT_A_DAY)).strip()
        if not (re.match(r'[0-9]{1,7}$', a_day) and int(a_day) >= 1):
            raise SettingError('FIBOSMS_REPLY_A_DAY must be a number of replies, 1 or more')
        self.a_day = int(a_day)
        self.db, self.journal = settings['FIBOSMS_DB'], settings.get('FIBOSMS_JOURNAL')
        self.config = settings.get('FIBOSMS_CONFIG') or self.db

    def __repr__(self):     # a traceback or a debugger never shows the password
        return '<fiboreply.Replier>'

    def check(self):
        """The other hook's own check (forward.Forwarder's), before anything runs."""
        if getattr(self.hook, 'check', None):
            self.hook.check()

    def __call__(self, message):
        self.check()
        self.reply(message)
        if self.hook is not None:
            self.hook(message)

    def reply(self, message):
        """Reply to `message` (the stored row, a dict) unless its reply was decided before;
        the reply's state."""
        conn = storage.connect(self.db, self.journal)
        try:
            prepare(conn)
            with storage.Transaction(conn):
                job = self.decide(conn, message)
            return self.send(conn, job) if job is not None else None
        finally:
            conn.close()

    def decide(self, conn, message):
        """In a transaction: the reply to `message`, its row made if it has none; the row,
        marked 'sending', when a request is to be made now, else None."""
        guid, now = message['guid'], time.time()
        row = conn.execute(SELECT_REPLY, (guid,)).fetchone()
        if row is None:
            rule, text = choose(self.rules, message['message'])
            phone = message.get('phone_normalised') or ''
            reason = ('no rule for it' if text is None else
                      'its rule says no reply' if not text else
                      'not a mobile number' if not MOBILE.match(phone) else
                      'sent more than a day ago' if now - sent_at(message) > TOO_OLD else
                      '%d replies to this phone in 24 hours already' % self.per_day
                      if conn.execute(TODAY, (phone, now - 86400)).fetchone()[0] >= self.per_day
                      else '%d replies in 24 hours already (FIBOSMS_REPLY_A_DAY)' % self.a_day
                      if conn.execute(TODAY_ALL, (now - 86400,)).fetchone()[0] >= self.a_day
                      else None)
            conn.execute(INSERT_REPLY, (guid, str(uuid.uuid5(NAMESPACE, guid)), None if reason
                                        else phone, 'skipped' if reason else 'pending', rule,
                                        text, reason, now))
            if reason:
                return None
        elif row['state'] != 'pending':
            return None
        return take(conn, guid)

    def send(self, conn, job):
        """Send the reply `job` (its row, marked 'sending'), record what came of it and, unless
        it was sent, say so in one log line; its new state."""
        code = reason = None
        phone = '0' + job['phone'][2:]      # a Vietnamese number, as written there (MOBILE)
        try:
            answer = self.client.send(phone, job['text'], job['sms_guid'], self.service_type,
                                      self.brand)
        except fiboapi.ApiError as exc:
            state = 'unknown' if exc.sent else 'pending' if job['attempts'] < TRIES else 'unsent'
            reason = exc.summary + {'unknown': '; not sent again', 'pending': '; tried again'
                                    ' by storage.py retry', 'unsent': '; %d tries: not tried'
                                    ' again' % TRIES}[state]
        else:
            code = answer.code
            state = 'sent' if code == 200 else 'unknown' if code is None else 'refused'
            reason = (None if code == 200 else 'an answer without a code; not sent again'
                      if code is None else 'refused by FiboSMS: %s' % fiboapi.CODES.get(
                          code, 'code %d' % code))
        with storage.Transaction(conn):
            conn.execute(RECORD, (state, code, reason, time.time(), job['guid']))
        if reason:
            import ownerlog
            ownerlog.log({}, self.config, 'reply to guid %r: %s' % (job['guid'], reason))
        return state


def sent_at(message):
    """When the customer sent `message` (Unix time): its createddate if catch-up stored it
    (fiboapi.py), else when it was first pushed (received_at)."""
    extra = message.get('extra') if isinstance(message.get('extra'), dict) else {}
    fetched = extra.get('fibosms_api') if fiboapi.fetched(message) else None
    when = fiboapi.parse_date(str(fetched.get('createddate') or '')) if isinstance(
        fetched, dict) else None
    return when if when is not None else fiboapi.parse_date(message['received_at']) or 0.0


def prepare(conn):
    """Make the replies' table in the messages database, if it is not there."""
    for statement in TABLES:
        conn.execute(statement)


def take(conn, guid):
    """In a transaction: the reply of `guid` marked 'sending' (its row), if it was 'pending'
    and has tries left; else None."""
    if conn.execute(TAKE, (time.time(), guid, TRIES)).rowcount != 1:
        return None
    return dict(conn.execute(SELECT_REPLY, (guid,)).fetchone())


def resend(settings, say):
    """``storage.py retry``'s part: each reply whose request never left sent again (its
    message may be processed: no hook runs for it), those left 'sending' by a process that
    ended marked 'unknown', phones older than FORGET_PHONE forgotten. How many wait still."""
    from receiver import SettingError
    try:
        replier = Replier(settings)
    except SettingError as exc:
        say('replies: %s' % exc.reason)
        return 1
    conn = storage.connect(replier.db, replier.journal)
    try:
        prepare(conn)
        now = time.time()
        with storage.Transaction(conn):
            conn.execute(MARK_STALE, (now - STALE,))
            conn.execute(GIVE_UP, (now - PENDING_FOR,))
            conn.execute(FORGET, (now - FORGET_PHONE,))
        waiting = 0
        for (guid,) in conn.execute("SELECT guid FROM fiboapi_replies WHERE state = 'pending'"
                                    " ORDER BY created_at").fetchall():
            with storage.Transaction(conn):
                job = take(conn, guid)
            if job is not None:
                state = replier.send(conn, job)
                waiting += state == 'pending'
                say('%s reply %s' % (fiboapi.printable(guid), state))
        return waiting
    finally:
        conn.close()


# -- The rules --------------------------------------------------------------------------------

def read_rules(value, plain=False):
    """{keyword: reply} of FIBOSMS_REPLY ('*': the default), each reply stripped, without
    diacritics if `plain`; SettingError for rules that cannot work."""
    from receiver import SettingError
    try:
        pairs = json.loads(value or '', object_pairs_hook=list)    # a key given twice, seen
    except ValueError:
        pairs = None
    if not (isinstance(pairs, list) and pairs and all(  # an object's pairs are tuples
            isinstance(p, tuple) and isinstance(p[0], str) and isinstance(p[1], str)
            for p in pairs)):
        raise SettingError('FIBOSMS_REPLY is not a JSON object of keywords and their replies,'
                           ' like {"*": "Cam on ban", "DK": "Ban da dang ky"}')
    rules = {}
    for key, text in pairs:
        word = '*' if key.strip() == '*' else keyword(key)
        if word is None or (word != '*' and fiboapi.fold(key) != word):
            raise SettingError('FIBOSMS_REPLY: %r is not "*" nor one word of letters and'
                               ' digits' % key[:20])
        if word in rules:
            raise SettingError('FIBOSMS_REPLY: two replies to %r (case and accents do not'
                               ' count)' % word[:20])
        text = without_diacritics(text.strip()) if plain else text.strip()
        if len(text) > MAX_REPLY or any(ord(c) < 32 and c not in '\r\n' for c in text):
            raise SettingError('FIBOSMS_REPLY: the reply to %r is over %d characters or holds'
                               ' control characters' % (word[:20], MAX_REPLY))
        rules[word] = text
    return rules


def keyword(text):
    """A message's keyword: its first run of letters and digits, without case or accents
    (fiboapi.loosen); None if it has none."""
    word = re.search(r'[^\W_]+', fiboapi.loosen(text[:SCAN]))
    return word.group() if word else None


def choose(rules, text):
    """(rule, reply) for a message's `text`: its keyword's, else the default's ('*'); (None,
    None) when there is neither."""
    word = keyword(text)
    if word in rules:
        return word, rules[word]
    return ('*', rules['*']) if '*' in rules else (None, None)


def without_diacritics(text):
    """`text` without its diacritics, đ and Đ as d and D: "Cảm ơn" -> "Cam on"."""
    import unicodedata
    text = unicodedata.normalize('NFD', text.replace('đ', 'd').replace('Đ', 'D'))
    return unicodedata.normalize('NFC', ''.join(c for c in text if not unicodedata.combining(c)))


def parts(text):
    """How many SMS `text` is sent as: 160 characters in one, 153 a part when longer, in the
    GSM alphabet (taken here as ASCII); 70, and 67 a part, in Unicode."""
    one, each = (160, 153) if all(ord(c) < 128 for c in text) else (70, 67)
    return 1 if len(text) <= one else -(-len(text) // each)


def yes(settings, name):
    """A yes/no setting; SettingError for another value."""
    from receiver import SettingError
    value = (settings.get(name) or '').strip().lower()
    if value not in YES + NO:
        raise SettingError('%s must be yes or no' % name)
    return value in YES


# -- What check reports -----------------------------------------------------------------------

def findings(conn, settings, now):
    """check's lines on the replies: the rules as read, the last day's replies, those of the
    last week whose outcome is unknown, and a refusal of the account no reply was sent since."""
    found = []
    if settings.get('FIBOSMS_REPLY'):
        try:
            rules = read_rules(settings['FIBOSMS_REPLY'], yes(settings, 'FIBOSMS_REPLY_ASCII'))
        except Exception:   # settings_findings names the setting
            rules = {}
        found.append(('reply_rules', ', '.join('%s: %s' % (word, '%d SMS' % parts(text) if text
                                                           else 'no reply')
                                               for word, text in sorted(rules.items()))
                      or 'none', True))
    counts = conn.execute('SELECT state, count(*) FROM fiboapi_replies WHERE created_at > ?'
                          ' GROUP BY state ORDER BY state', (now - 86400,)).fetchall()
    found.append(('replies', 'in the last 24 hours: %s' % (', '.join(
        '%d %s' % (n, state) for state, n in counts) or 'none'), True))
    unknown = [r[0] for r in conn.execute(
        "SELECT guid FROM fiboapi_replies WHERE created_at > ? AND (state = 'unknown' OR"
        " (state = 'sending' AND tried_at < ?)) ORDER BY created_at", (now - UNKNOWN_FOR,
                                                                       now - STALE))]
    if unknown:
        found.append(('reply_unknown', '%d replies of the last %d days may or may not have'
                      ' gone (guid %s): never sent again; the account\'s list of sent SMS at'
                      ' FiboSMS tells' % (len(unknown), UNKNOWN_FOR // 86400,
                                          ', '.join(unknown[:5])), False))
    refused = conn.execute("SELECT code, answered_at FROM fiboapi_replies WHERE state ="
                           " 'refused' AND code IN (%s) ORDER BY answered_at DESC LIMIT 1"
                           % ', '.join(map(str, ACCOUNT_CODES))).fetchone()
    sent = conn.execute("SELECT max(answered_at) FROM fiboapi_replies WHERE state = 'sent'"
                        ).fetchone()[0]
    if refused is not None and (sent is None or refused['answered_at'] > sent):
        found.append(('reply_account', 'FiboSMS refuses the replies since %s: %s; %s' % (
            storage.utc_iso(refused['answered_at']), fiboapi.CODES[refused['code']],
            ACCOUNT_CODES[refused['code']]), False))
    return found
