"""The accounts web pages. Like the API: validate the form, call a service, map its domain
errors to form errors, render or redirect; nothing else lives here.

Pages that make the system email a typed address answer every address alike, as the services
do; links from emails are checked on GET but used only by a POST, because mail scanners and
link previews fetch every link they see.
"""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import deletion, services, throttling, tokens
from accounts.forms import (
    AccountDeleteForm,
    EmailForm,
    LoginForm,
    NewPasswordForm,
    SignupForm,
    TokenForm,
)

# HEAD too: link checkers and previews ask for it, and it must not be a 405.
page_methods = require_http_methods(["GET", "HEAD", "POST"])

# For a token that is missing, oversized or carries NUL: nothing the signer ever made.
BROKEN_LINK = "This link is invalid or has expired."


@require_http_methods(["GET", "HEAD"])
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/home.html")


@never_cache
@page_methods
def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        email = form.cleaned_data["email"]
        if (refusal := _attempts_refused(request, scope="signup", email=email)) is not None:
            return refusal
        try:
            services.user_signup(
                email=form.cleaned_data["email"], password=form.cleaned_data["password"]
            )
        except ValidationError as error:
            form.add_error("password", error)
        else:
            # The same page for a new and a taken address: the difference is in the email.
            return redirect("accounts:check-email")
    return render(request, "accounts/signup.html", {"form": form})


@never_cache
@page_methods
def verify_email(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST if request.method == "POST" else request.GET)
    if not form.is_valid():
        return _link_invalid(request, reason=BROKEN_LINK, purpose=tokens.PURPOSE_VERIFY)
    token = form.cleaned_data["token"]
    try:
        if request.method == "POST":
            services.email_verify(token=token)
            return redirect("accounts:verify-email-done")
        # Checked without being used, so a spent or expired link says so before the click.
        tokens.token_user(purpose=tokens.PURPOSE_VERIFY, token=token)
    except tokens.InvalidToken as error:
        return _link_invalid(request, reason=str(error), purpose=tokens.PURPOSE_VERIFY)
    return render(request, "accounts/verify_email.html", {"form": form})


@never_cache
@page_methods
def resend_verification(request: HttpRequest) -> HttpResponse:
    return _email_request_page(
        request,
        scope="resend",
        service=services.verification_resend_request,
        template="accounts/resend_verification.html",
        done="accounts:check-email",
    )


@never_cache
@page_methods
def login_page(request: HttpRequest) -> HttpResponse:
    form = LoginForm(request.POST if request.method == "POST" else None)
    next_url = request.POST.get("next") or request.GET.get("next", "")
    context = {"form": form, "next": next_url}
    if form.is_valid():
        try:
            result = services.user_login(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                ip=throttling.client_ip(request),
                device_cookie=request.COOKIES.get(throttling.DEVICE_COOKIE),
            )
        except throttling.TooManyAttempts as refusal:
            return _too_many_attempts(request, refusal)
        except services.LoginFailed as error:
            form.add_error(None, str(error))
        except services.EmailNotVerified as error:
            form.add_error(None, str(error))
            context["offer_resend"] = True
        else:
            login(request, result.user)
            response = redirect(_safe_next(request, next_url) or reverse("accounts:dashboard"))
            throttling.device_cookie_set(response, result.device_cookie)
            return response
    return render(request, "accounts/login.html", context)


@require_POST
def logout_page(request: HttpRequest) -> HttpResponse:
    logout(request)
    return redirect("accounts:home")


@never_cache
@page_methods
def password_reset(request: HttpRequest) -> HttpResponse:
    return _email_request_page(
        request,
        scope="reset",
        service=services.password_reset_request,
        template="accounts/password_reset.html",
        done="accounts:password-reset-sent",
    )


def _email_request_page(
    request: HttpRequest, *, scope: str, service, template: str, done: str
) -> HttpResponse:
    """A form that asks for an email to be sent to an address: limited, and answered the same
    whether or not the address has an account (the service decides quietly)."""
    form = EmailForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        email = form.cleaned_data["email"]
        if (refusal := _attempts_refused(request, scope=scope, email=email)) is not None:
            return refusal
        service(email=email)
        return redirect(done)
    return render(request, template, {"form": form})


@never_cache
@page_methods
def password_reset_confirm(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        link = TokenForm(request.GET)
        if not link.is_valid():
            return _link_invalid(request, reason=BROKEN_LINK, purpose=tokens.PURPOSE_RESET)
        try:
            tokens.token_user(purpose=tokens.PURPOSE_RESET, token=link.cleaned_data["token"])
        except tokens.InvalidToken as error:
            return _link_invalid(request, reason=str(error), purpose=tokens.PURPOSE_RESET)
        form = NewPasswordForm(initial=link.cleaned_data)
        return render(request, "accounts/password_reset_confirm.html", {"form": form})

    form = NewPasswordForm(request.POST)
    if "token" in form.errors:
        return _link_invalid(request, reason=BROKEN_LINK, purpose=tokens.PURPOSE_RESET)
    if form.is_valid():
        try:
            services.password_reset_confirm(
                token=form.cleaned_data["token"], password=form.cleaned_data["password"]
            )
        except tokens.InvalidToken as error:
            return _link_invalid(request, reason=str(error), purpose=tokens.PURPOSE_RESET)
        except ValidationError as error:
            form.add_error("password", error)
        else:
            return redirect("accounts:password-reset-done")
    return render(request, "accounts/password_reset_confirm.html", {"form": form})


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/dashboard.html")


@never_cache
@login_required
@page_methods
def account_delete(request: HttpRequest) -> HttpResponse:
    """Ask for the account's deletion with the password, or cancel a scheduled one (the form
    on this page and the banner on every page post `action=cancel`)."""
    if request.method == "POST" and request.POST.get("action") == "cancel":
        try:
            deletion.account_deletion_cancel(user=request.user)
        except deletion.DeletionRefused as refusal:
            return _account_delete_page(
                request, AccountDeleteForm(), problem=str(refusal), status=409
            )
        return redirect("accounts:account-delete-cancelled")
    form = AccountDeleteForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            scheduled_for = deletion.account_deletion_request(
                user=request.user,
                password=form.cleaned_data["password"],
                ip=throttling.client_ip(request),
            )
        except throttling.TooManyAttempts as refusal:
            return _too_many_attempts(request, refusal)
        except deletion.WrongPassword as error:
            form.add_error("password", str(error))
        except deletion.StaffAccount:
            return _account_delete_page(request, form, status=403)  # the page says why
        except deletion.DeletionRefused as refusal:
            return _account_delete_page(request, form, problem=str(refusal), status=409)
        else:
            # The request ended the account's sessions in the database; this drops the
            # browser's cookie too. The date is shown in this answer rather than after a
            # redirect: the next request is anonymous and could not look it up.
            logout(request)
            return render(
                request,
                "accounts/account_delete_scheduled.html",
                {
                    "scheduled_for": scheduled_for,
                    "grace_days": settings.ACCOUNT_DELETION_GRACE_DAYS,
                },
            )
    return _account_delete_page(request, form)


def _account_delete_page(
    request: HttpRequest, form: AccountDeleteForm, *, problem: str = "", status: int = 200
) -> HttpResponse:
    context = {
        "form": form,
        "problem": problem,
        "grace_days": settings.ACCOUNT_DELETION_GRACE_DAYS,
    }
    return render(request, "accounts/account_delete.html", context, status=status)


def _safe_next(request: HttpRequest, url: str) -> str | None:
    # Only a page of this site: anything else would make the login form an open redirect.
    allowed = url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return url if allowed else None


def _link_invalid(request: HttpRequest, *, reason: str, purpose: str) -> HttpResponse:
    return render(
        request,
        "accounts/link_invalid.html",
        {"reason": reason, "verification": purpose == tokens.PURPOSE_VERIFY},
        status=400,
    )


def _attempts_refused(request: HttpRequest, *, scope: str, email: str) -> HttpResponse | None:
    """The 429 page if this attempt is over an abuse limit, else None (and it is counted)."""
    try:
        throttling.attempts_limit(scope=scope, email=email, ip=throttling.client_ip(request))
    except throttling.TooManyAttempts as refusal:
        return _too_many_attempts(request, refusal)
    return None


def _too_many_attempts(request: HttpRequest, refusal: throttling.TooManyAttempts) -> HttpResponse:
    response = render(
        request,
        "accounts/too_many_attempts.html",
        {"retry_at": timezone.now() + timedelta(seconds=refusal.retry_after)},
        status=429,
    )
    response["Retry-After"] = str(refusal.retry_after)
    return response
