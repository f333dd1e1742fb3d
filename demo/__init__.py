"""`make demo`: the publisher workflow across real processes.

Also home of the stack launcher the end-to-end tests reuse."""
