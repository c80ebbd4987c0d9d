from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from accounts import checks  # noqa: F401 - registers the system checks

        # Every app's areas of the erasure registry (accounts/erasure.py).
        autodiscover_modules("erasure")
