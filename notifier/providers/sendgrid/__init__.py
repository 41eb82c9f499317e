"""SendGrid: the Mail Send adapter, the Event Webhook's delivery reports and their signature check."""
