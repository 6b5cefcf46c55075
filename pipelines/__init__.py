"""Recipes that chain the stages: the demo, cluster extraction, paper configs, feature import."""
