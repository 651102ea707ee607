// Payment notifications. A canary file of the test suite: the credentials are planted.
const stripe = require("stripe")("sk_live_51HqLcnRyT0k3nZ9xQ2vB7mW4pD8sF6gJ1kL3zX5c");
const SLACK_BOT_TOKEN = "xoxb-2210598671-3826619854261-Zq8LtR4mWc7VnB2pKs9Dy6Hf";

async function notifyPaid(invoice) {
  const res = await fetch("https://api.billing.example.com/v1/notify", {
    method: "POST",
    headers: { Authorization: "Bearer 9f8Kq2LmZ7xR4tVb1NcW6pYs3JdH0gUe5aTi8oQn" },
    body: JSON.stringify({ id: invoice.id, amount: invoice.total }),
  });
  return res.ok;
}

function formatAmount(cents, currency) {
  return `${(cents / 100).toFixed(2)} ${currency}`;
}

module.exports = { notifyPaid, formatAmount, stripe, SLACK_BOT_TOKEN };
