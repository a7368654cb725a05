from router.magistral_defaults import with_default_sampling, with_system_prompt

DEFAULTS = {"temperature": 0.7, "top_p": 0.95}


def test_defaults_fill_only_missing_values():
    assert with_default_sampling({}, DEFAULTS) == DEFAULTS
    assert with_default_sampling({"temperature": 0.0, "seed": 3}, DEFAULTS) == {"temperature": 0.0, "top_p": 0.95, "seed": 3}


def test_system_prompt_added_only_when_request_has_none():
    user = [{"role": "user", "content": "hi"}]
    assert with_system_prompt(user, "Think first.") == [{"role": "system", "content": "Think first."}, *user]
    own = [{"role": "system", "content": "Mine."}, *user]
    assert with_system_prompt(own, "Think first.") == own
    assert with_system_prompt(user, None) == user
