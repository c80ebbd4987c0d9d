"""The accounts API. Views validate and call services; nothing else lives here."""

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import deletion, services, throttling, tokens
from accounts.models import ApiToken
from accounts.services import PASSWORD_MAX_LENGTH
from accounts.tokens import TOKEN_MAX_LENGTH
from config.schema import ErrorSerializer

ACCEPTED = {"detail": "If the address can receive email, a message is on its way."}


class EmailSerializer(serializers.Serializer):
    # EmailField refuses CR/LF and anything else that is not an address; 254 is RFC 5321's cap.
    email = serializers.EmailField(max_length=254)


class CredentialsSerializer(EmailSerializer):
    password = serializers.CharField(max_length=PASSWORD_MAX_LENGTH, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=TOKEN_MAX_LENGTH)


class NewPasswordSerializer(TokenSerializer):
    password = serializers.CharField(max_length=PASSWORD_MAX_LENGTH, trim_whitespace=False)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    email_verified = serializers.BooleanField()
    deletion_scheduled_for = serializers.DateTimeField(allow_null=True)


DetailSerializer = inline_serializer("Detail", {"detail": serializers.CharField()})


class PublicView(APIView):
    permission_classes = [AllowAny]
    # No session authentication here: these endpoints must not demand a CSRF token from
    # API clients; the web forms have their own views.
    authentication_classes: list = []

    def valid(self, serializer_class, request: Request) -> dict:
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def limit(self, request: Request, *, scope: str, email: str) -> None:
        try:
            throttling.attempts_limit(scope=scope, email=email, ip=throttling.client_ip(request))
        except throttling.TooManyAttempts as refusal:
            raise too_many_attempts(refusal) from refusal


def too_many_attempts(refusal: throttling.TooManyAttempts) -> exceptions.Throttled:
    # DRF's Throttled answers 429 with a Retry-After header.
    return exceptions.Throttled(wait=refusal.retry_after, detail=str(refusal))


def password_errors(error: DjangoValidationError) -> serializers.ValidationError:
    return serializers.ValidationError({"password": list(error.messages)})


@extend_schema(request=CredentialsSerializer, responses={202: DetailSerializer})
class SignupView(PublicView):
    rate_limited_methods = ("POST",)

    def post(self, request: Request) -> Response:
        data = self.valid(CredentialsSerializer, request)
        self.limit(request, scope="signup", email=data["email"])
        try:
            services.user_signup(email=data["email"], password=data["password"])
        except DjangoValidationError as error:
            raise password_errors(error) from error
        return Response(ACCEPTED, status=status.HTTP_202_ACCEPTED)


@extend_schema(request=TokenSerializer, responses={200: DetailSerializer})
class VerifyEmailView(PublicView):
    def post(self, request: Request) -> Response:
        data = self.valid(TokenSerializer, request)
        try:
            services.email_verify(token=data["token"])
        except tokens.InvalidToken as error:
            raise serializers.ValidationError({"token": [str(error)]}) from error
        return Response({"detail": "Your email address is confirmed."})


@extend_schema(request=EmailSerializer, responses={202: DetailSerializer})
class ResendVerificationView(PublicView):
    rate_limited_methods = ("POST",)

    def post(self, request: Request) -> Response:
        data = self.valid(EmailSerializer, request)
        self.limit(request, scope="resend", email=data["email"])
        services.verification_resend_request(email=data["email"])
        return Response(ACCEPTED, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    request=CredentialsSerializer,
    responses={
        200: inline_serializer("LoginToken", {"token": serializers.CharField()}),
        403: OpenApiResponse(
            ErrorSerializer, description="The password is right; the address is not verified."
        ),
    },
)
class LoginView(PublicView):
    rate_limited_methods = ("POST",)  # locked after repeated failed passwords

    def post(self, request: Request) -> Response:
        data = self.valid(CredentialsSerializer, request)
        try:
            login = services.user_login(
                email=data["email"],
                password=data["password"],
                ip=throttling.client_ip(request),
                device_cookie=request.COOKIES.get(throttling.DEVICE_COOKIE),
            )
        except throttling.TooManyAttempts as refusal:
            raise too_many_attempts(refusal) from refusal
        except services.LoginFailed as error:
            raise exceptions.ValidationError({"detail": str(error)}) from error
        except services.EmailNotVerified as error:
            return Response({"detail": str(error), "errors": {}}, status=403)
        response = Response({"token": services.api_token_create(user=login.user)})
        throttling.device_cookie_set(response, login.device_cookie)
        return response


@extend_schema(request=None, responses={204: None})
class LogoutView(APIView):
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        if isinstance(request.auth, ApiToken):
            services.api_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(request=EmailSerializer, responses={202: DetailSerializer})
class PasswordResetView(PublicView):
    rate_limited_methods = ("POST",)

    def post(self, request: Request) -> Response:
        data = self.valid(EmailSerializer, request)
        self.limit(request, scope="reset", email=data["email"])
        services.password_reset_request(email=data["email"])
        return Response(ACCEPTED, status=status.HTTP_202_ACCEPTED)


@extend_schema(request=NewPasswordSerializer, responses={200: DetailSerializer})
class PasswordResetConfirmView(PublicView):
    def post(self, request: Request) -> Response:
        data = self.valid(NewPasswordSerializer, request)
        try:
            services.password_reset_confirm(token=data["token"], password=data["password"])
        except tokens.InvalidToken as error:
            raise serializers.ValidationError({"token": [str(error)]}) from error
        except DjangoValidationError as error:
            raise password_errors(error) from error
        return Response({"detail": "Your password is changed; log in with the new one."})


@extend_schema(responses={200: MeSerializer})
class MeView(APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> Response:
        user = request.user
        return Response(
            MeSerializer(
                {
                    "id": user.pk,
                    "email": user.email,
                    "email_verified": user.email_verified,
                    "deletion_scheduled_for": user.deletion_scheduled_for,
                }
            ).data
        )


class PasswordSerializer(serializers.Serializer):
    password = serializers.CharField(max_length=PASSWORD_MAX_LENGTH, trim_whitespace=False)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


@extend_schema(
    request=PasswordSerializer,
    responses={
        202: inline_serializer("DeletionScheduled", {"scheduled_for": serializers.DateTimeField()}),
        403: OpenApiResponse(ErrorSerializer, description="A staff account cannot delete itself."),
        409: OpenApiResponse(ErrorSerializer, description="A deletion is scheduled already."),
    },
)
class AccountDeletionView(APIView):
    """Delete my account: its data is erased after ACCOUNT_DELETION_GRACE_DAYS; until then a log
    in and a DELETE here cancel it. Every session and token of the account ends at once."""

    permission_classes = [IsAuthenticated]
    rate_limited_methods = ("POST",)  # password attempts, counted like a login's

    def post(self, request: Request) -> Response:
        serializer = PasswordSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            scheduled_for = deletion.account_deletion_request(
                user=request.user,
                password=serializer.validated_data["password"],
                ip=throttling.client_ip(request),
            )
        except throttling.TooManyAttempts as refusal:
            raise too_many_attempts(refusal) from refusal
        except deletion.WrongPassword as error:
            raise serializers.ValidationError({"password": [str(error)]}) from error
        except deletion.StaffAccount as error:
            raise exceptions.PermissionDenied(str(error)) from error
        except deletion.DeletionRefused as error:
            raise Conflict(str(error)) from error
        return Response(
            {"scheduled_for": serializers.DateTimeField().to_representation(scheduled_for)},
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(
        request=None,
        responses={
            200: DetailSerializer,
            409: OpenApiResponse(
                ErrorSerializer, description="Nothing is scheduled, or the erasure has started."
            ),
        },
    )
    def delete(self, request: Request) -> Response:
        try:
            deletion.account_deletion_cancel(user=request.user)
        except deletion.DeletionRefused as error:
            raise Conflict(str(error)) from error
        return Response({"detail": "The deletion of your account is cancelled."})
