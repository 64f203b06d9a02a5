"""Deployment artefacts generated from code: the nginx edge in front of the service instances."""
