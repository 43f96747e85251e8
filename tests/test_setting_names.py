"""The names `misspelt_settings` compares against are every name the settings reader asks for."""

from shared.config import SETTING_NAMES, Settings, misspelt_settings
from shared.errors import ConfigError


class RecordingEnv(dict):
    def __init__(self, values):
        super().__init__(values)
        self.asked = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def test_every_setting_the_reader_asks_for_is_a_known_name():
    for source in ("keyvault-secret", "file"):
        env = RecordingEnv({"SIGNING_KEY_SOURCE": source, "EXPORT_STORAGE": "UseDevelopmentStorage=true"})
        try:
            Settings.load(env)
        except ConfigError:
            pass
        assert env.asked and env.asked <= SETTING_NAMES, env.asked - SETTING_NAMES


def test_a_misspelt_name_gets_the_closest_real_one():
    assert misspelt_settings({"BANENOR_DIRECTROY": "x"})[0][1].count("BANENOR_DIRECTORY") == 1


def test_a_name_in_the_wrong_case_is_misspelt():
    assert "MAX_ATTEMPTS" in misspelt_settings({"max_attempts": "3"})[0][1]


def test_the_platforms_own_names_are_left_alone():
    env = {"PATH": "/bin", "HOME": "/root", "WEBSITE_SITE_NAME": "x", "AzureWebJobsStorage__accountName": "a",
           "HTTPS_PROXY": "", "NO_PROXY": "", "CURL_CA_BUNDLE": "", "PYTHONPATH": "", "STACK_PARTNER_ORGNO": "1",
           "EXPORT_STORAGE__blobServiceUri": "https://a", "SYNC_SCHEDULE": "0 */5 * * * *"}
    assert misspelt_settings(env) == []
