"""Unit tests of the test harness's stand-ins and mirror builders (tests/mirror): counted apart
from the product's unit tests."""
