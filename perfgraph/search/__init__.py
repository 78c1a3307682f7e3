"""Model-guided search: rank candidates without running them, measure the best, keep the fastest."""
