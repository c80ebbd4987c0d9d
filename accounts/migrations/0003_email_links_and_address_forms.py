import re

from django.db import migrations, models
from django.db.models import F

from accounts.emails import TOKEN_PLACEHOLDER
from accounts.models import address_normalize
from accounts.tokens import PURPOSE_RESET, PURPOSE_VERIFY, token_state

_TOKEN_IN_LINK = re.compile(r"token=[^\s\"'<&]+")
_LINK_PURPOSES = {"verification": PURPOSE_VERIFY, "password_reset": PURPOSE_RESET}


def remove_stored_tokens(apps, schema_editor):
    """Bodies stored before this release hold working tokens: those still to be sent get the
    placeholder and the state their token is made from at send time; the rest lose theirs."""
    EmailDelivery = apps.get_model("accounts", "EmailDelivery")
    for delivery in EmailDelivery.objects.filter(body_text__contains="token=").select_related(
        "user"
    ):
        unsent = delivery.status in {"queued", "sending"} and delivery.user is not None
        purpose = _LINK_PURPOSES.get(delivery.kind) if unsent else None
        replacement = f"token={TOKEN_PLACEHOLDER}" if purpose else "token=removed"
        delivery.body_text = _TOKEN_IN_LINK.sub(replacement, delivery.body_text)
        delivery.body_html = _TOKEN_IN_LINK.sub(replacement, delivery.body_html)
        if purpose:
            delivery.link_purpose = purpose
            delivery.link_state = token_state(purpose=purpose, user=delivery.user)
        delivery.save(update_fields=["body_text", "body_html", "link_purpose", "link_state"])


def normalize_addresses(apps, schema_editor):
    """Store every address in today's normal form. Where two accounts turn out to be spellings
    of one mailbox, the verified one (else the one used last) gets the normal form, so its owner
    still logs in; the other keeps its old spelling for a person to merge or delete."""
    User = apps.get_model("accounts", "User")
    verified_first = User.objects.order_by(
        F("email_verified_at").asc(nulls_last=True), F("last_login").desc(nulls_last=True)
    )
    for user in verified_first.only("pk", "email"):
        normal = address_normalize(user.email)
        if normal != user.email and not User.objects.filter(email=normal).exists():
            User.objects.filter(pk=user.pk).update(email=normal)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_apitoken_emaildelivery"),
    ]

    operations = [
        migrations.AddField(
            model_name="emaildelivery",
            name="link_purpose",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddField(
            model_name="emaildelivery",
            name="link_state",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.RunPython(remove_stored_tokens, migrations.RunPython.noop),
        migrations.RunPython(normalize_addresses, migrations.RunPython.noop),
    ]
