"""Topics, command and outcome models, and the CloudEvents Kafka codec."""
