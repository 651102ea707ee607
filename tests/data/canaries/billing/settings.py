"""Settings of the billing service. A canary file of the test suite: every credential below is planted,
and none may reach the clean data, a training shard or the x-ray (tests/test_data_stage.py)."""

import os

AWS_ACCESS_KEY_ID = "AKIAQ7LCNRY2X4TZ9W3M"
AWS_SECRET_ACCESS_KEY = "q8Rz1vK0tLmN3bX7cY5wA2dF6gH9jP4sE0uI1oTb"
DATABASE_URL = "postgresql://billing:Vn7kQ2zXpL9wX4mR@db.billing.example.com:5432/invoices"
GITHUB_TOKEN = "ghp_4fHq9ZtL2mXc8VbN1pRs7KdY3wJe6TuA0gQi"
REGION = os.environ.get("AWS_REGION", "eu-west-1")


def invoice_total(lines: list[tuple[str, int, float]]) -> float:
    """The sum of quantity times unit price over an invoice's lines."""
    return round(sum(quantity * price for _, quantity, price in lines), 2)


def overdue(invoices: list[dict], today: int) -> list[str]:
    """Ids of the invoices whose due day has passed and that are not paid."""
    return [i["id"] for i in invoices if i["due"] < today and not i.get("paid")]
