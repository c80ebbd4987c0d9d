"""A report's PDF holds the person's figures and file names, and its rendering fetches nothing
but the bundled assets, whatever the person's data says (reports/rendering.py)."""

import io
import socket
import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from pypdf import PdfReader

from accounts.models import EmailDelivery
from media.models import Upload
from reports import services
from reports.models import Report
from reports.periods import period_containing
from reports.rendering import ASSETS, pdf_from_html
from tests.reports.support import pdf_text

User = get_user_model()


class Listener:
    """A TCP port that counts who connects: proof that a render asked nothing of the network."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener():
    opened = Listener()
    yield opened
    opened.close()


def embedded_files(pdf: bytes) -> list:
    """The files the PDF carries: in its document-level list, and as file annotations of its
    pages (what `<a rel="attachment">` makes)."""
    reader = PdfReader(io.BytesIO(pdf))
    annotated = [
        annotation.get_object()
        for page in reader.pages
        for annotation in page.get("/Annots", [])
        if annotation.get_object().get("/Subtype") == "/FileAttachment"
    ]
    return [*reader.attachments, *annotated]


def test_hostile_html_fetches_nothing_embeds_nothing_and_keeps_the_bundled_assets(listener):
    # given a page that asks for the network, files outside the assets (through a path that
    # climbs out of them too), and an attachment, beside a data: image and the bundled CSS
    url = f"http://127.0.0.1:{listener.port}"
    climbing = (ASSETS / ".." / "services.py").as_uri()
    html = f"""<html><head><link rel="stylesheet" href="report.css">
      <link rel="stylesheet" href="{url}/style.css">
      <link rel="attachment" href="file:///etc/passwd">
      <link rel="attachment" href="{url}/leak">
      <style>@import url("{url}/imported.css");</style></head>
      <body><p>Hello</p><img src="{url}/pixel.png"><img src="file:///etc/passwd">
      <img src="{climbing}"><iframe src="{url}/frame"></iframe>
      <img src="data:image/gif;base64,R0lGODlhAQABAAAAACwAAAAAAQABAAA=">
      <a href="{url}/link">a link is only a link</a>
      <a rel="attachment" href="data:text/plain;base64,U0VDUkVU">a data: attachment</a>
      <a rel="attachment" href="report.css">an asset as an attachment</a></body></html>"""
    # when it is laid out
    rendered = pdf_from_html(html)
    # then nothing reached the network, nothing outside the assets was read, nothing embedded
    assert listener.connections == 0
    assert embedded_files(rendered.pdf) == []
    assert f"{url}/style.css" in rendered.refused
    assert f"{url}/pixel.png" in rendered.refused
    assert "file:///etc/passwd" in rendered.refused
    assert any(refused.endswith("services.py") for refused in rendered.refused)
    assert not any("report.css" in refused or "data:" in refused for refused in rendered.refused)
    assert "Hello" in pdf_text(rendered.pdf)


@pytest.mark.django_db
def test_a_report_holds_the_persons_figures_and_names_and_hostile_names_stay_text(listener):
    # given a person whose uploads in March are named to make a renderer fetch or embed
    user = User.objects.create_user("reader@example.com", "x" * 12)
    period = period_containing(
        timezone.now().replace(year=2026, month=3, day=15),
        frequency="monthly",
        timezone="Europe/Paris",
    )
    names = [
        f'<img src="http://127.0.0.1:{listener.port}/x">.jpg',
        '<link rel="attachment" href="file:///etc/passwd">',
        "holiday.jpg",
    ]
    for index, name in enumerate(names):
        upload = Upload.objects.create(
            owner=user,
            original_name=name,
            source_format="JPEG",
            source_bytes=1000 * (index + 1),
            status="ready",
        )
        Upload.objects.filter(pk=upload.pk).update(
            created_at=period.start + timedelta(days=index, hours=12)
        )
    # and an upload of someone else, and one of theirs outside the period
    other = User.objects.create_user("other@example.com", "x" * 12)
    Upload.objects.create(owner=other, original_name="not-mine.jpg", source_format="JPEG",
                          source_bytes=5, status="ready")  # fmt: skip
    late = Upload.objects.create(owner=user, original_name="april.jpg", source_format="JPEG",
                                 source_bytes=5, status="ready")  # fmt: skip
    Upload.objects.filter(pk=late.pk).update(created_at=period.end + timedelta(hours=1))
    report = Report.objects.create(
        user=user,
        frequency=period.frequency,
        timezone=period.timezone,
        period_start=period.start,
        period_end=period.end,
    )
    # when it is rendered
    assert services.report_render(report_id=str(report.pk))
    # then the PDF holds the figures and each name as text, asked for nothing, embeds nothing
    pdf = services.report_file(report.pk).read_bytes()
    text = pdf_text(pdf)
    assert listener.connections == 0
    assert embedded_files(pdf) == []
    assert "1 March 2026 to 31 March 2026" in text
    assert "Europe/Paris" in text
    assert "holiday.jpg" in text
    assert "<link" in text.replace("\n", "")  # shown, not obeyed
    assert "not-mine.jpg" not in text and "april.jpg" not in text
    report.refresh_from_db()
    assert (report.status, report.progress, report.pdf_bytes) == ("ready", 100, len(pdf))
    # and one email is queued with the PDF attached
    email = EmailDelivery.objects.get(kind=EmailDelivery.Kind.REPORT_READY)
    assert email.recipient == user.email
    assert email.attachment == f"reports/{report.pk}.pdf"
    # and rendering it again does nothing more
    assert not services.report_render(report_id=str(report.pk))
    assert EmailDelivery.objects.filter(kind=EmailDelivery.Kind.REPORT_READY).count() == 1


@pytest.mark.django_db
def test_an_empty_period_gives_a_short_correct_report():
    user = User.objects.create_user("quiet@example.com", "x" * 12)
    period = period_containing(timezone.now(), frequency="daily", timezone="UTC").before()
    report = Report.objects.create(
        user=user,
        frequency="daily",
        timezone="UTC",
        period_start=period.start,
        period_end=period.end,
    )
    assert services.report_render(report_id=str(report.pk))
    pdf = services.report_file(report.pk).read_bytes()
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1
    assert "No uploads in this period." in pdf_text(pdf)


@pytest.mark.django_db
def test_a_report_erased_while_it_renders_leaves_no_pdf(monkeypatch):
    # given a report whose row goes (its account is erased) while its PDF is being laid out
    user = User.objects.create_user("erased-meanwhile@example.com", "x" * 12)
    period = period_containing(timezone.now(), frequency="daily", timezone="UTC").before()
    report = Report.objects.create(
        user=user, frequency="daily", timezone="UTC", period_start=period.start,
        period_end=period.end,
    )  # fmt: skip
    render = services.rendering.pdf_render

    def render_while_erased(**kwargs):
        Report.objects.filter(pk=report.pk).delete()
        return render(**kwargs)

    monkeypatch.setattr(services.rendering, "pdf_render", render_while_erased)
    # when the render finishes, then it reports nothing made, and no file is left behind
    assert not services.report_render(report_id=str(report.pk))
    assert not any(services.report_file(report.pk).parent.glob(f"{report.pk}*"))
    assert not EmailDelivery.objects.filter(kind=EmailDelivery.Kind.REPORT_READY).exists()


@pytest.mark.django_db
def test_a_delivery_that_finds_its_report_finished_meanwhile_changes_nothing(monkeypatch):
    # given a report another delivery finishes while this one is about to start rendering
    user = User.objects.create_user("twice@example.com", "x" * 12)
    period = period_containing(timezone.now(), frequency="daily", timezone="UTC").before()
    report = Report.objects.create(
        user=user, frequency="daily", timezone="UTC", period_start=period.start,
        period_end=period.end,
    )  # fmt: skip
    assert services.report_render(report_id=str(report.pk))
    Report.objects.filter(pk=report.pk).update(status=Report.Status.QUEUED)
    original_filter = Report.objects.filter

    def finished_by_another_delivery_first(*args, **kwargs):
        # The claim (the one filter on status__in): the other delivery commits "ready" just
        # before it.
        if "status__in" in kwargs:
            original_filter(pk=report.pk).update(status=Report.Status.READY)
        return original_filter(*args, **kwargs)

    monkeypatch.setattr(Report.objects, "filter", finished_by_another_delivery_first)
    assert not services.report_render(report_id=str(report.pk))
    assert Report.objects.all().get(pk=report.pk).status == Report.Status.READY
    assert EmailDelivery.objects.filter(kind=EmailDelivery.Kind.REPORT_READY).count() == 1
