from oauth2_provider.oauth2_validators import OAuth2Validator

# Usernames whose e-mail address the provider does not vouch for ("email_verified": false in
# the config's users), as a provider that lets people type in any address says of it.
UNVERIFIED: set[str] = set()


class GroupsClaimValidator(OAuth2Validator):
    """Puts the user's e-mail, name and Django groups (the `groups` claim) into the ID token
    and userinfo, as Keycloak, Okta or Entra ID do with their group claims."""

    oidc_claim_scope = {**OAuth2Validator.oidc_claim_scope, "groups": "profile"}

    def get_additional_claims(self, request):
        user = request.user
        claims = {"email": user.email, "email_verified": user.username not in UNVERIFIED, "preferred_username": user.username}
        groups = sorted(user.groups.values_list("name", flat=True))
        if groups:  # someone in no group gets no claim at all, as most providers do
            claims["groups"] = groups
        return claims
