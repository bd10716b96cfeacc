"""Moderation semantics: taxonomy, policies, decisions, evidence spans and explanations."""
