"""The operator's rules as plain classes (no gRPC): see `operator_svc.domain.operator.Operator`
for the assembled entry points a front door calls."""
