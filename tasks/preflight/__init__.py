"""Before the first run in an AWS account: what the code needs from it (derived from its own requests), the IAM
policies rendered for it, and a read-only check of the account."""
