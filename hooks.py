"""The hook: what processes a message once it is stored, and its bookkeeping.

Loaded only after a message is committed, and only where a hook is set (SETTINGS):
FIBOSMS_FORWARD_URL (a signed POST to the business's application, forward.py) or
FIBOSMS_HANDLER (a Python function, ``module:function``), and FIBOSMS_REPLY (an SMS back to
the customer, fiboreply.py: first, then the other, if any; it records itself, so that neither
repeats the other's effect). Nothing here runs before the row is stored, so nothing here
can keep a message from being stored: a hook that will not load, fails or hangs leaves the
row 'failed' (or 'processing' until its claim ends), and the push is answered 1.

The rules, with storage.deliver's claim:
- A hook runs only under its message's claim, so never twice at once for one guid; never
  again once it succeeded ('processed').
- At most storage.MAX_HOOKS run at once on one database, counted by their live claims, in
  every process: a push that finds them all running is stored, left 'failed' and answered 1,
  so that a hung application never holds every worker of the server (nor its queue).
- A push waits at most receiver.HOOK_WAIT for its hook; a hook still running then keeps its
  claim (storage.CLAIM_SECONDS; under CGI, whose process ends just after, receiver.CGI_CLAIM).
- A crash between the hook's end and its record runs it again later: a hook must be safe to
  repeat for one guid (forward.py's webhook-id lets the application dedupe).
- `python3 storage.py retry` runs the hook over failed rows and expired claims.
"""
import json
import threading
import traceback

import storage

# The settings that make a hook (receiver.store tests the same names before loading this).
SETTINGS = ('FIBOSMS_HANDLER', 'FIBOSMS_FORWARD_URL', 'FIBOSMS_REPLY')
RETRYABLE = """SELECT guid FROM messages
    WHERE state = 'failed' OR (state = 'processing' AND claimed_until < ?) ORDER BY id"""


def after(action, use, guid, settings, wait):
    """What follows the commit of `guid` (storage.deliver's `action`): run the hook ('run'),
    or say why not ('busy', 'full'). None once the hook succeeded, else the log's reason."""
    if action == 'busy':
        return 'hook already running for this guid'
    if action == 'full':
        return storage.HOOKS_FULL % storage.MAX_HOOKS
    return run(use, guid, settings, wait)


def run(use, guid, settings, wait):
    """Run the hook `settings` name for the claimed `guid`, in a thread of its own; wait at
    most `wait` seconds. Returns None once it succeeded, else the reason for the log."""
    outcome = []

    def work():
        try:
            outcome.append(process(use, guid, lambda: load(settings)))
        except Exception as exc:    # the database failed around the hook
            outcome.append('storage failed around it: %s' % type(exc).__name__)

    thread = threading.Thread(target=work, name='fibosms-hook', daemon=True)
    thread.start()
    thread.join(wait)
    if not outcome:
        return 'hook still running after %g s' % wait
    return outcome[0] and 'hook failed: %s' % outcome[0]


def process(use, guid, load_hook):
    """Run the hook `load_hook()` gives on the stored `guid` and record how it ended; return
    None when it returned, else the log's line: its `summary` if it has one (forward.py's
    name the host and status, never the message), else its class name. The traceback goes to
    the row's last_error. `use()` gives a connection: ``with use() as conn:``."""
    with use() as conn:
        row = conn.execute(storage.SELECT_MESSAGE, (guid,)).fetchone()
    if row is None:
        return 'the message is no longer in the database'
    message = dict(row, extra=json.loads(row['extra']))
    try:
        load_hook()(message)
    except (Exception, SystemExit) as exc:  # sys.exit() in a hook thread would end it unseen
        error, summary = traceback.format_exc(), getattr(exc, 'summary', type(exc).__name__)
    else:
        error = summary = None
    with use() as conn, storage.Transaction(conn):
        storage.record(conn, guid, error)
    return summary


def configured(settings):
    """Whether the settings make a hook (SETTINGS)."""
    return any(settings.get(name) for name in SETTINGS)


def load(settings):
    """The hook the settings name: a POST to the application (FIBOSMS_FORWARD_URL,
    forward.py), or FIBOSMS_HANDLER's module:function (or a callable given to make_app); with
    FIBOSMS_REPLY, the reply (fiboreply.Replier) and then that one, if any."""
    from receiver import SettingError
    if settings.get('FIBOSMS_REPLY'):
        try:
            import fiboreply
        except ImportError:
            raise SettingError('FIBOSMS_REPLY is set, but fiboreply.py or fiboapi.py is not'
                               ' beside receiver.py: upload them')
        rest = dict(settings, FIBOSMS_REPLY=None)
        return fiboreply.Replier(settings, load(rest) if configured(rest) else None)
    handler, url = settings.get('FIBOSMS_HANDLER'), settings.get('FIBOSMS_FORWARD_URL')
    if url:
        try:
            import forward
        except ImportError:
            raise SettingError('FIBOSMS_FORWARD_URL is set, but forward.py is not beside'
                               ' receiver.py: upload it')
        return forward.Forwarder(url, settings.get('FIBOSMS_FORWARD_SECRET'), handler)
    if callable(handler):
        return handler
    import importlib
    module, _, name = (handler or '').partition(':')
    if not (module and name):
        raise SettingError('FIBOSMS_HANDLER %r is not module:function' % (handler or '')[:80])
    hook = importlib.import_module(module)
    for part in name.split('.'):
        hook = getattr(hook, part)
    if not callable(hook):
        raise SettingError('FIBOSMS_HANDLER %s is not callable' % handler[:80])
    return hook


def retry(use, settings, report):
    """Run the hook over each failed message and each whose claim expired, one at a time,
    each under a claim of its own; `report(guid, reason or None)` for each; return how
    many still fail."""
    failures = 0
    with use() as conn:
        guids = [r[0] for r in conn.execute(RETRYABLE, (storage.time.time(),)).fetchall()]
    for guid in guids:
        with use() as conn, storage.Transaction(conn):
            row = conn.execute(storage.SELECT_MESSAGE, (guid,)).fetchone()
            claimed = row and storage.claim(conn, row, storage.time.time(),
                                            storage.CLAIM_SECONDS) == 'run'
        if claimed:
            error = process(use, guid, lambda: load(settings))
            failures += error is not None
            report(guid, error)
    return failures
