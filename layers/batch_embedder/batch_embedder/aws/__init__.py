"""Small named modules around the AWS services the workflow uses (S3, DynamoDB, Secrets)."""
