"""The erasure registry (accounts/erasure.py) covers every place that can hold a person's data:
a model added later with a link to the account, or an email address, fails here until it says
how it is erased."""

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import models

from accounts.erasure import Policy, erasure_areas

User = get_user_model()


def registered_models() -> set[type[models.Model]]:
    return {area.model for area in erasure_areas()}


def links_to_the_account(model: type[models.Model]) -> list[str]:
    return [
        field.name
        for field in model._meta.get_fields()
        if field.concrete and field.is_relation and field.related_model is User
    ]


def holds_an_address(model: type[models.Model]) -> list[str]:
    return [
        field.name
        for field in model._meta.concrete_fields
        if isinstance(field, models.EmailField) or "email" in field.name
    ]


def test_every_model_linked_to_the_account_or_holding_an_address_is_in_the_registry():
    # The account row itself is the erasure's last step (accounts.deletion), not an area.
    missing = [
        f"{model._meta.label} ({', '.join(links_to_the_account(model) + holds_an_address(model))})"
        for model in apps.get_models()
        if model is not User
        and (links_to_the_account(model) or holds_an_address(model))
        and model not in registered_models()
    ]
    assert not missing, f"no erasure area for: {missing}"


def test_a_row_that_stays_says_why():
    for area in erasure_areas():
        if area.policy is Policy.DELETE:
            assert not area.reason, area.name
        else:
            assert len(area.reason) > 20, area.name


def test_the_registry_names_the_areas_the_product_promises():
    names = {area.name for area in erasure_areas()}
    assert {
        "accounts.AccountSession",
        "accounts.ApiToken",
        "accounts.EmailDelivery",
        "media.Upload",
        "jobs.OutboxMessage",
        "jobs.DeadLetter",
    } <= names
