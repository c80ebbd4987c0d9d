from django.urls import path
from django.views.generic import TemplateView

from accounts import api, views

app_name = "accounts"

api_urlpatterns = [
    path("auth/signup", api.SignupView.as_view(), name="api-signup"),
    path("auth/verify-email", api.VerifyEmailView.as_view(), name="api-verify-email"),
    path("auth/resend-verification", api.ResendVerificationView.as_view(), name="api-resend"),
    path("auth/login", api.LoginView.as_view(), name="api-login"),
    path("auth/logout", api.LogoutView.as_view(), name="api-logout"),
    path("auth/password-reset", api.PasswordResetView.as_view(), name="api-password-reset"),
    path(
        "auth/password-reset/confirm",
        api.PasswordResetConfirmView.as_view(),
        name="api-password-reset-confirm",
    ),
    path("me", api.MeView.as_view(), name="api-me"),
    path("account/deletion", api.AccountDeletionView.as_view(), name="api-account-deletion"),
]


# The web pages. Emails link to these paths, so they never change.
urlpatterns = [
    path("", views.home, name="home"),
    path("signup", views.signup, name="signup"),
    path(
        "signup/check-email",
        TemplateView.as_view(template_name="accounts/check_email.html"),
        name="check-email",
    ),
    path("verify-email", views.verify_email, name="verify-email"),
    path(
        "verify-email/done",
        TemplateView.as_view(template_name="accounts/verify_email_done.html"),
        name="verify-email-done",
    ),
    path("resend-verification", views.resend_verification, name="resend-verification"),
    path("login", views.login_page, name="login"),
    path("logout", views.logout_page, name="logout"),
    path("password-reset", views.password_reset, name="password-reset"),
    path(
        "password-reset/sent",
        TemplateView.as_view(template_name="accounts/password_reset_sent.html"),
        name="password-reset-sent",
    ),
    path("password-reset/confirm", views.password_reset_confirm, name="password-reset-confirm"),
    path(
        "password-reset/done",
        TemplateView.as_view(template_name="accounts/password_reset_done.html"),
        name="password-reset-done",
    ),
    path("dashboard", views.dashboard, name="dashboard"),
    path("account/delete", views.account_delete, name="account-delete"),
    path(
        "account/delete/cancelled",
        TemplateView.as_view(template_name="accounts/account_delete_cancelled.html"),
        name="account-delete-cancelled",
    ),
]
