"""Shared bits of the test_geometry_* files."""
import pytest
import torch


