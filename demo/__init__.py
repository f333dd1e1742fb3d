"""`make demo`: the publisher workflow across real processes, and the stack launcher e2e tests reuse."""
