"""The console's subscribers pages: the list (filters and pages), export and import of a CSV, and
a reader's unsubscribe and erasure. Routes of the console's blueprint (web.admin.bp)."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

from flask import Response, abort, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user
from werkzeug.wrappers import Response as BaseResponse

from ..db.models import Frequency, SubscriberStatus
from ..delivery.sending import erase_outbox_copies
from ..errors import NewsletterError
from ..subscribers.rules import (
    EXPORT_FIELDS,
    Choices,
    chosen_sections,
    import_csv,
    sets_taking,
    write_csv,
)
from . import services
from .admin import PAGE, _local, bp, log, login_required, row_id


@bp.get("/subscribers")
@login_required
def subscribers() -> str:
    svc = services()
    query = (request.args.get("q") or "").strip()[:200]
    status = request.args.get("status") or None
    if status not in {s.value for s in SubscriberStatus}:
        status = None
    after = request.args.get("after", 0, type=row_id)
    choices = Choices.of(svc.settings)
    frequency = next((f for f in Frequency if f.value == request.args.get("frequency")), None)
    section = request.args.get("section") if request.args.get("section") in choices.sections else None
    held = {t.sections for t in svc.store.preference_tally()} if section else set()
    page = svc.store.search_subscribers(
        query=query,
        status=status,
        frequency=frequency,
        sections_in=sets_taking(section, held, choices) if section else None,
        after=after,
        limit=PAGE,
    )
    return render_template(
        "web/admin/subscribers.html.j2",
        page=page,
        query=query,
        status=status,
        statuses=[s.value for s in SubscriberStatus],
        next_after=page[-1].id if len(page) == PAGE else None,
        counts=svc.store.subscriber_counts(),
        choices=choices,
        frequency=frequency,
        section=section,
        taken=lambda sub: ", ".join(chosen_sections(sub.sections, choices)) or "all",
    )


@bp.get("/subscribers/export.csv")
@login_required
def export() -> Response:
    store = services().store

    def rows() -> Iterator[str]:  # streamed: a million rows never sit in memory
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_FIELDS)
        for n, sub in enumerate(store.iter_subscribers(), 1):
            write_csv([sub], buffer, header=False)
            if n % 1000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(
        stream_with_context(rows()),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=subscribers.csv"},
    )


@bp.post("/subscribers/import")
@login_required
def import_file() -> str | BaseResponse:
    svc = services()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash("Choose a CSV file to import.", "error")
        return redirect(url_for(".subscribers"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "import.csv"
        upload.save(path)
        try:
            report = import_csv(path, svc.store, now=svc.now(), choices=Choices.of(svc.settings))
        except NewsletterError as exc:
            flash(f"Nothing imported: {str(exc).replace(str(path), upload.filename)}", "error")
            return redirect(url_for(".subscribers"))
    log.info(
        "admin %s imported %d subscribers (%d bad lines)", current_user.name, report.added, len(report.bad)
    )
    return render_template("web/admin/imported.html.j2", report=report, filename=upload.filename)


@bp.post("/subscribers/<int:subscriber_id>/unsubscribe")
@login_required
def unsubscribe(subscriber_id: int) -> BaseResponse:
    svc = services()
    if svc.store.get_subscriber_by_id(subscriber_id) is None:
        abort(404)
    svc.store.unsubscribe(subscriber_id, now=svc.now())
    log.info("admin %s unsubscribed subscriber %s", current_user.name, subscriber_id)
    flash(f"Subscriber #{subscriber_id} is unsubscribed.")
    return redirect(request.referrer if _local(request.referrer) else url_for(".subscribers"))


@bp.post("/subscribers/<int:subscriber_id>/erase")
@login_required
def erase(subscriber_id: int) -> BaseResponse:
    svc = services()
    address = svc.store.erase_subscriber(subscriber_id, now=svc.now())
    if address is None:
        abort(404)
    removed = erase_outbox_copies(svc.settings, subscriber_id, address)
    # the log names the row, never the address
    log.info("admin %s erased subscriber %s (%d outbox copies)", current_user.name, subscriber_id, removed)
    flash(f"Subscriber #{subscriber_id} is erased: address, name and IP are gone; the counts stay.")
    return redirect(url_for(".subscribers"))
