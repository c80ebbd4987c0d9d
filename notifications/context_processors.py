from notifications.selectors import unread_count


def unread_notifications(request) -> dict:
    """The header's unread count, on every page of a logged-in person: one count on an index
    of their unread notifications."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"unread_notifications": unread_count(user=user)}
