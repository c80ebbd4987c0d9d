"""How the API's lists are split into pages (DEFAULT_PAGINATION_CLASS)."""

import re

from rest_framework import exceptions, pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """DRF's page numbers, read strictly: no `page`, or one `page` of decimal digits. DRF itself
    reads the last of several, an empty one as page 1, "last" as the last page and anything
    int() takes (" 1", "1_0", Arabic-Indic digits): none of them is the integer the schema
    promises. Refused as DRF refuses a page past the end: 404, "Invalid page."."""

    def get_page_number(self, request, paginator):
        numbers = request.query_params.getlist(self.page_query_param)
        if not numbers:
            return 1
        if len(numbers) > 1 or not re.fullmatch(r"[0-9]+", numbers[0]):
            raise exceptions.NotFound(self.invalid_page_message)
        return numbers[0]
