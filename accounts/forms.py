from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError

from accounts import services, throttling
from accounts.models import User
from accounts.services import PASSWORD_MAX_LENGTH
from accounts.tokens import TOKEN_MAX_LENGTH


class AdminUserAddForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class AdminUserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


class AdminLoginForm(AdminAuthenticationForm):
    """The admin's login, behind the same guessing lock as the API and the pages: its failures
    count toward theirs, and theirs toward it."""

    def clean(self) -> dict:
        email = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if email is None or not password:
            return self.cleaned_data  # the field errors already say what is missing
        try:
            self.user_cache = services.user_login(
                email=email,
                password=password,
                ip=throttling.client_ip(self.request),
                device_cookie=self.request.COOKIES.get(throttling.DEVICE_COOKIE),
            ).user
        except throttling.TooManyAttempts as refusal:
            raise ValidationError(str(refusal), code="too_many_attempts") from refusal
        except (services.LoginFailed, services.EmailNotVerified):
            raise self.get_invalid_login_error() from None
        self.confirm_login_allowed(self.user_cache)  # staff only
        return self.cleaned_data


# The web pages' forms. They only check the shape of the input, with the API's limits; the
# services decide everything else, and the views turn their domain errors into form errors.


class PageForm(forms.Form):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")  # labels sit above their fields: no colon
        super().__init__(*args, **kwargs)


class EmailForm(PageForm):
    # EmailField refuses CR/LF and anything else that is not an address; 254 is RFC 5321's cap.
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"})
    )


class SignupForm(EmailForm):
    password = forms.CharField(
        max_length=PASSWORD_MAX_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="A long passphrase you use nowhere else is best.",
    )


class LoginForm(EmailForm):
    password = forms.CharField(
        max_length=PASSWORD_MAX_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class TokenForm(PageForm):
    """The token of an emailed link, from its query string or from the page's hidden field."""

    token = forms.CharField(max_length=TOKEN_MAX_LENGTH, widget=forms.HiddenInput)


class NewPasswordForm(TokenForm):
    password = forms.CharField(
        label="New password",
        max_length=PASSWORD_MAX_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )


class AccountDeleteForm(PageForm):
    # The password again: a session left open on a shared computer must not delete the account.
    password = forms.CharField(
        max_length=PASSWORD_MAX_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
